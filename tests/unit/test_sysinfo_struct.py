"""The container's struct sysinfo from given cgroup figures (ctrun.runtime.sysinfo): the
computation, the cgroup files read on v1, v2 and a hybrid host, and the buffer check."""

import ctypes
import os

import pytest

from ctrun.runtime import sysinfo

G = 1 << 30
HOST = {"totalram": 24 * G, "totalswap": 4 * G, "freeswap": 3 * G,
        "loads": (65536, 32768, 0)}
CG = {"limit": 512 << 20, "usage": 100 << 20, "swap_limit": None, "swap_usage": None,
      "shmem": 3 << 20, "tasks": 7}


def test_the_struct_is_the_kernels_64_bit_layout():
    assert ctypes.sizeof(sysinfo.Sysinfo) == 112
    assert sysinfo.host()["totalram"] > 0
    assert sysinfo.Sysinfo.procs.offset == 80 and sysinfo.Sysinfo.mem_unit.offset == 104


def test_a_limited_container():
    s = sysinfo.compute(HOST, CG, 42.7)
    assert (s.totalram, s.freeram, s.sharedram, s.bufferram) == \
        (512 << 20, 412 << 20, 3 << 20, 0)
    assert (s.uptime, s.procs, s.mem_unit) == (42, 7, 1)
    assert list(s.loads) == [65536, 32768, 0]                  # the host's
    assert (s.totalswap, s.freeswap) == (4 * G, 3 * G)          # no swap limit: the host's


def test_no_limit_and_a_limit_above_the_hosts_ram_are_the_hosts_ram():
    for limit in (None, 64 * G):
        s = sysinfo.compute(HOST, {**CG, "limit": limit}, 0)
        assert s.totalram == 24 * G and s.freeram == 24 * G - (100 << 20)


def test_usage_over_the_limit_leaves_nothing_free_and_procs_fits_16_bits():
    s = sysinfo.compute(HOST, {**CG, "usage": 600 << 20, "tasks": 70000}, -5)
    assert (s.freeram, s.procs, s.uptime) == (0, 0xFFFF, 0)


def test_swap_limit_and_use():
    s = sysinfo.compute(HOST, {**CG, "swap_limit": G, "swap_usage": G // 4}, 0)
    assert (s.totalswap, s.freeswap) == (G, 3 * G // 4)
    s = sysinfo.compute(HOST, {**CG, "swap_limit": 8 * G, "swap_usage": 0}, 0)
    assert s.totalswap == 4 * G                                 # at most the host's swap
    s = sysinfo.compute({**HOST, "totalswap": 0, "freeswap": 0},
                        {**CG, "swap_usage": 0}, 0)
    assert (s.totalswap, s.freeswap) == (0, 0)


def _files(d, **files):
    """Files named with "__" for "." (memory__limit_in_bytes: memory.limit_in_bytes)."""
    os.makedirs(d, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(d, name.replace("__", ".")), "w") as f:
            f.write(text)


def test_cgroup_v1_on_a_hybrid_host(tmp_path):
    """memory and pids on their v1 hierarchies, the cgroup2 side without either: each is
    found by its own files; the smallest limit along the ancestors counts."""
    v1 = tmp_path / "memory"
    _files(v1, memory__limit_in_bytes=str(1 << 30))
    _files(v1 / "ctrun", memory__limit_in_bytes=str(256 << 20))
    _files(v1 / "ctrun/c", memory__limit_in_bytes=str(512 << 20))
    _files(v1 / "ctrun/c/ct", memory__limit_in_bytes="9223372036854771712",
           memory__usage_in_bytes=str(10 << 20), memory__memsw__usage_in_bytes=str(12 << 20),
           memory__memsw__limit_in_bytes="9223372036854771712",
           memory__stat="cache 5\nshmem 1\ntotal_shmem 4096\n")
    _files(tmp_path / "pids/ctrun/c/ct", pids__current="3\n")
    _files(tmp_path / "unified/ctrun/c/ct", cgroup__procs="")
    cg = sysinfo.Cgroup([str(tmp_path / h / "ctrun/c/ct/cgroup.procs")
                         for h in ("unified", "memory", "pids")])
    assert cg.read() == {"limit": 256 << 20, "usage": 10 << 20, "swap_limit": None,
                         "swap_usage": 2 << 20, "shmem": 4096, "tasks": 3}


def test_cgroup_v1_memsw_limit_is_memory_plus_swap(tmp_path):
    d = tmp_path / "memory/ctrun/c/ct"
    _files(d, memory__limit_in_bytes=str(100 << 20), memory__usage_in_bytes="0",
           memory__memsw__limit_in_bytes=str(150 << 20), memory__memsw__usage_in_bytes="0",
           memory__stat="")
    assert sysinfo.Cgroup([str(d / "cgroup.procs")]).read()["swap_limit"] == 50 << 20


def test_cgroup_v2(tmp_path):
    root = tmp_path / "cg2"
    _files(root, cgroup__procs="")                  # the root has no memory.max
    _files(root / "ctrun", memory__max="max", memory__swap__max="max")
    _files(root / "ctrun/c", memory__max=str(512 << 20), memory__swap__max=str(64 << 20))
    _files(root / "ctrun/c/ct", memory__max="max", memory__current=str(20 << 20),
           memory__swap__max="max", memory__swap__current=str(1 << 20),
           memory__stat="anon 1\nshmem 8192\n", pids__current="5")
    cg = sysinfo.Cgroup([str(root / "ctrun/c/ct/cgroup.procs")])
    assert cg.read() == {"limit": 512 << 20, "usage": 20 << 20, "swap_limit": 64 << 20,
                         "swap_usage": 1 << 20, "shmem": 8192, "tasks": 5}


def test_without_a_pids_controller_the_threads_are_counted(tmp_path):
    d = tmp_path / "cg2/c/ct"
    _files(d, memory__max="max", memory__current="0", memory__stat="", cgroup__threads="1\n2\n")
    _files(d / "sub", cgroup__threads="3\n")
    assert sysinfo.Cgroup([str(d / "cgroup.procs")]).read()["tasks"] == 3


def test_no_memory_controller_is_refused(tmp_path):
    _files(tmp_path / "c/ct", cgroup__procs="")
    with pytest.raises(LookupError):
        sysinfo.Cgroup([str(tmp_path / "c/ct/cgroup.procs")])


MAPS = (b"1000-3000 rw-p 00000000 00:00 0\n"
        b"3000-4000 rw-p 00000000 00:00 0 [heap]\n"
        b"5000-6000 r--p 00000000 00:00 0\n"
        b"7000-8000 rw-p 00000000 00:00 0\n")


@pytest.mark.parametrize("addr, size, ok", [
    (0x1000, 112, True), (0x2fc0, 112, True),     # within one mapping; across two adjoining
    (0x3fc0, 112, False),                         # runs into the hole after the heap
    (0x5000, 112, False),                         # read-only
    (0x0, 112, False), (0x7fa0, 112, False),      # unmapped; off the end
    (1 << 64, 112, False),                        # no such address
])
def test_the_buffer_must_be_writable_all_along(addr, size, ok):
    r, w = os.pipe()
    os.write(w, MAPS)
    os.close(w)
    try:
        assert sysinfo._writable(r, addr, size) is ok
    finally:
        os.close(r)


def test_the_filter_notifies_only_the_native_sysinfo():
    bpf = sysinfo._bpf()
    assert len(bpf) == 6 * 8
    arch, nr = sysinfo._ARCH
    assert int.from_bytes(bpf[12:16], "little") == arch
    assert int.from_bytes(bpf[28:32], "little") == nr
