"""ctrun.oci.store: the state records read and the state document written without the json
module (as json reads and writes them), and the root's cache."""

import json
import os
import stat
import zlib

import pytest

from ctrun.oci import store

DOCS = [
    {"ociVersion": "1.0.2", "id": "c1", "status": "created", "pid": 4242, "owner": "",
     "annotations": {"io.podman.annotations.autoremove": "TRUE", "k": "v\u00e9\n\"\\\x01\u2028"}},
    {"n": [[], [{}], [[1, -2]]], "t": True, "f": False, "z": None, "e": {}, "l": []},
    {}, [], "text", 0,
]


@pytest.mark.parametrize("doc", DOCS)
def test_dumps_is_json_dumps_indent_2(doc):
    assert store.dumps(doc) == json.dumps(doc, indent=2)


def test_dumps_hands_other_types_to_json():
    assert store.dumps({"x": 1.5, "y": [2.0]}) == json.dumps({"x": 1.5, "y": [2.0]}, indent=2)
    assert store.dumps({1: "a"}) == json.dumps({1: "a"}, indent=2)


@pytest.mark.parametrize("doc", DOCS + [{"x": 1.5, "big": 10 ** 30, "inf": float("inf")}])
def test_loads_reads_what_json_writes(doc):
    for text in (json.dumps(doc), json.dumps(doc, indent=1, sort_keys=True) + "\n",
                 "  " + json.dumps(doc)):
        assert store.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", "{}x", "nul", '{"a": 1,}', "[1] [2]"])
def test_loads_refuses_what_json_refuses(text):
    with pytest.raises(ValueError) as e:
        store.loads(text)
    with pytest.raises(ValueError) as want:
        json.loads(text)
    assert str(e.value) == str(want.value)


def test_cache_makes_once_per_key_and_never_serves_another_keys_data(tmp_path):
    root = store.Root(tmp_path / "root")
    made = []

    def make(data):
        return lambda: made.append(data) or data

    assert root.cached("profile A", make(b"program A")) == b"program A"
    assert root.cached("profile A", make(b"again")) == b"program A"
    assert made == [b"program A"]
    cache = tmp_path / "root" / ".cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    # an entry under the name key B would have (as a checksum collision would place it)
    # holds A's key: B's program is made, A's never served for it
    entry = next(cache.iterdir())
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    kb = b"profile B"
    os.replace(entry, cache / f"{zlib.crc32(kb):08x}{zlib.adler32(kb):08x}")
    assert root.cached("profile B", make(b"program B")) == b"program B"
    assert made == [b"program A", b"program B"]
