"""ctrun.runtime.security: closing inherited descriptors."""

import errno
import os
import resource

from ctrun.kernel import linux
from ctrun.runtime import security


def _closed_ranges(monkeypatch, fail_close_range=False):
    """Run close_fds({5, 9}) with the closing calls recorded instead of made."""
    got = []

    def close_range(first, last=0xFFFFFFFF, flags=0):
        if fail_close_range:
            raise OSError(errno.ENOSYS, "close_range")
        got.append((first, last))

    monkeypatch.setattr(linux, "close_range", close_range)
    monkeypatch.setattr(os, "closerange", lambda lo, hi: got.append((lo, hi - 1)))
    security.close_fds({5, 9, 1})
    return got


def test_close_fds_closes_up_to_the_largest_fd(monkeypatch):
    # no ceiling: a descriptor above 2**20 (possible where fs.nr_open is raised) goes too
    assert _closed_ranges(monkeypatch) == [(3, 4), (6, 8), (10, 0xFFFFFFFF)]


def test_close_fds_falls_back_to_the_fd_limit_without_close_range(monkeypatch):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert _closed_ranges(monkeypatch, fail_close_range=True) == [(3, 4), (6, 8),
                                                                  (10, min(hard, 1 << 32) - 1)]


def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_close_fds_really_closes(tmp_path):
    pid = os.fork()
    if pid == 0:
        try:
            w = os.open(tmp_path, os.O_RDONLY)
            high = os.dup2(w, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1)
            keep = os.open(tmp_path, os.O_RDONLY)
            security.close_fds({keep})
            os._exit(0 if [_is_open(fd) for fd in (0, keep, w, high)] == [True, True, False,
                                                                           False] else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
