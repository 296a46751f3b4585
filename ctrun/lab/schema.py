"""The JSON Schema of results.json, kept next to the code (schema.json) and printed by
`ctrun lab --schema`."""

import json
from pathlib import Path

from ..errors import InvalidInput

PATH = Path(__file__).resolve().parent / "schema.json"


def load():
    return json.loads(PATH.read_text())


def validate(data, what="results"):
    """Raise InvalidInput naming the first violation (python3-jsonschema, from DEBS)."""
    try:
        import jsonschema
    except ImportError:
        from ..errors import HostUnsupported
        raise HostUnsupported("checking lab results needs python3-jsonschema; run: apt-get "
                              "install python3-jsonschema") from None
    err = next(iter(sorted(jsonschema.Draft7Validator(load()).iter_errors(data),
                           key=lambda e: list(e.path))), None)
    if err is not None:
        where = "/".join(str(p) for p in err.path) or "(top)"
        raise InvalidInput(f"{what} does not match the lab's schema at {where}: "
                           f"{err.message[:200]}")
