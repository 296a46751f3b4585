"""ctrun.runtime.mounts: OCI / mount(8) option lists as mount(2) flags, propagation and data."""

import pytest

from ctrun.libc import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
                        MS_REMOUNT, MS_SLAVE, MS_STRICTATIME)
from ctrun.runtime import mounts


@pytest.mark.parametrize("options, flags", [
    (["ro"], MS_RDONLY),
    (["ro", "rw"], 0),                      # the later one wins
    (["nosuid", "nodev", "noexec"], MS_NOSUID | MS_NODEV | MS_NOEXEC),
    (["nosuid", "suid", "nodev", "dev", "noexec", "exec"], 0),
    (["bind"], MS_BIND),
    (["rbind", "ro"], MS_BIND | MS_REC | MS_RDONLY),
    (["remount", "ro"], MS_REMOUNT | MS_RDONLY),
    (["sync"], mounts.MS_SYNCHRONOUS),
    (["noatime"], 1024),
    (["relatime", "strictatime"], MS_STRICTATIME),   # one atime mode at a time
    (["strictatime", "noatime"], 1024),
    (["nodiratime"], mounts.MS_NODIRATIME),
    (["nodiratime", "diratime"], 0),
    (["defaults"], 0),
])
def test_flags(options, flags):
    assert mounts.parse(options) == (flags, [], None)


def test_unknown_options_are_the_file_system_s_data_in_order():
    flags, prop, data = mounts.parse(["nosuid", "newinstance", "ptmxmode=0666", "mode=0620",
                                      "gid=5", "noexec"])
    assert (flags, prop, data) == (MS_NOSUID | MS_NOEXEC, [],
                                   "newinstance,ptmxmode=0666,mode=0620,gid=5")
    assert mounts.parse(["mode=755", "size=65536k"])[2] == "mode=755,size=65536k"


@pytest.mark.parametrize("name, flag", [
    ("private", MS_PRIVATE), ("rprivate", MS_PRIVATE | MS_REC),
    ("slave", MS_SLAVE), ("rslave", MS_SLAVE | MS_REC),
    ("shared", mounts.MS_SHARED), ("rshared", mounts.MS_SHARED | MS_REC),
    ("unbindable", mounts.MS_UNBINDABLE), ("runbindable", mounts.MS_UNBINDABLE | MS_REC),
])
def test_propagation_is_apart_from_the_flags(name, flag):
    """mount(2) takes a propagation change in a call of its own: never mixed in flags."""
    assert mounts.parse(["rbind", name]) == (MS_BIND | MS_REC, [flag], None)


def test_empty_and_missing():
    assert mounts.parse([]) == (0, [], None)
    assert mounts.parse(None) == (0, [], None)


@pytest.mark.parametrize("m, bind", [
    ({"type": "bind", "options": []}, True),
    ({"type": "none", "options": ["rbind", "ro"]}, True),
    ({"options": ["bind"]}, True),
    ({"type": "tmpfs", "options": ["mode=755"]}, False),
    ({"type": "proc"}, False),
])
def test_is_bind(m, bind):
    assert mounts.is_bind(m) is bind
