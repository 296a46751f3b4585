#!/usr/bin/env bash
# The whole test suite, as root: installs what it needs (setup.sh --no-demo), then pytest.
# pytest's "no tests collected" (exit 5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo || exit 1
VENV=${CTRUN_VENV:-/opt/ctrun/venv}
"$VENV/bin/python" -m pytest -ra "$@" tests
rc=$?
if [ $rc -eq 5 ]; then echo "run-tests.sh: no tests ran" >&2; exit 1; fi
exit $rc
