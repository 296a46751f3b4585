"""The start pools (ctrun.pools): pre-made cgroups renamed into place and pre-made network
namespaces joined by path, per store, against the real kernel (root)."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import CLI, own_store, server_named, server_pids, until
from ctrun import pools
from ctrun.api import Ctrun
from ctrun.cgroups import detect
from ctrun.network.nspool import NetnsPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
PARENT = os.environ["CTRUN_CGROUP_PARENT"]


def _mem_mount():
    layout = detect()
    key = layout.has_v1("memory")
    if key is None:
        pytest.skip("cgroup v2 cannot rename a cgroup: no cgroup pool on this host")
    return layout.v1[key]


def _run(ct, name, script, **opts):
    """A detached container running script; its pid."""
    ct.create(name, image="busybox", cmd=["sh", "-c", script], **opts)
    ct.start(name)
    return ct.inspect(name)["pid"]


def test_pooled_cgroup_is_renamed_into_place_and_limits_work(store):
    mnt = _mem_mount()
    ct = Ctrun(store, pool=True)
    cgp = pools.cgroup_pool(ct.store)
    assert cgp.fill(2) == 2
    entries = cgp.entries()
    inodes = {os.stat(mnt / PARENT / e).st_ino for e in entries}
    pid = _run(ct, "p1", "sleep 60", limits={"memory": "64M", "pids_limit": "20"})
    cg = ct.cgroup_manager("p1")
    mine = mnt / cg.rel
    # the very directory of a pool entry, renamed: same inode, one entry fewer
    assert os.stat(mine).st_ino in inodes and len(cgp.entries()) == 1
    assert str(pid) in (mine / "ct" / "cgroup.procs").read_text().split()
    assert re.search(r":memory:/" + re.escape(cg.rel) + "/ct$",
                     Path(f"/proc/{pid}/cgroup").read_text(), re.M)
    assert cg.read_limits()["memory"] == 64 * 1024 ** 2
    assert (mine / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 ** 2)
    assert cg.read_limits()["pids_limit"] == 20
    ct.destroy("p1", force=True)
    assert not mine.exists()
    assert pools.drain(ct.store) == (1, 0)


def test_pooled_netns_has_lo_up_and_no_host_interface(store):
    ct = Ctrun(store, pool=True)
    nsp = NetnsPool(ct.store)
    assert nsp.fill(1) == 1
    entry = nsp.entries()[0]
    ino = os.stat(entry).st_ino   # the bind mount shows the namespace's own inode
    pid = _run(ct, "n1", "sleep 60", net="none")
    assert os.readlink(f"/proc/{pid}/ns/net") == f"net:[{ino}]"
    assert not entry.exists() and nsp.entries() == []   # used once, released at start
    links = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in links] == ["lo"]
    from pyroute2 import NetNS
    with NetNS(f"/proc/{pid}/ns/net") as ns:
        lo = ns.get_links(ifname="lo")[0]
        assert lo["flags"] & 1    # IFF_UP


def test_attached_run_with_ctrun_pool_set_takes_from_both_pools(store, monkeypatch):
    _mem_mount()
    monkeypatch.setenv("CTRUN_POOL", "1")
    ct = Ctrun(store)
    assert pools.fill(ct.store, 2) == (2, 2)
    assert ct.run("busybox", ["sh", "-c", "grep -q lo: /proc/net/dev"], name="a1",
                  rm=True, net="none") == 0
    # one of each used: the cgroup went with the container, the namespace's mount at start
    assert len(pools.cgroup_pool(ct.store).entries()) == 1
    assert len(NetnsPool(ct.store).entries()) == 1
    assert sorted(os.listdir(ct.store.run / "netns")) == [NetnsPool(ct.store).entries()[0].name]
    assert pools.drain(ct.store) == (1, 1)


def test_two_stores_take_only_their_own_entries():
    with own_store() as a_root, own_store() as b_root:
        a, b = Ctrun(a_root, pool=True), Ctrun(b_root, pool=True)
        _mem_mount()
        pools.fill(a.store, 1)
        pools.fill(b.store, 1)
        a_cg, a_ns = pools.cgroup_pool(a.store).entries(), NetnsPool(a.store).entries()
        _run(b, "same", "sleep 60", net="none")
        assert pools.cgroup_pool(b.store).entries() == [] and NetnsPool(b.store).entries() == []
        assert pools.cgroup_pool(a.store).entries() == a_cg
        assert NetnsPool(a.store).entries() == a_ns
        CLI(b_root)("gc", check=True)          # B's gc leaves A's pools alone
        assert pools.cgroup_pool(a.store).entries() == a_cg
        assert NetnsPool(a.store).entries() == a_ns
        assert pools.drain(a.store) == (1, 1)


def test_gc_empties_the_pools(store, cli, monkeypatch):
    monkeypatch.setenv("CTRUN_POOL", "0")   # the server gc starts keeps them empty
    ct = Ctrun(store)
    pools.fill(ct.store, 2)
    out = cli("gc", check=True).stdout
    assert "emptied the start pools" in out
    assert pools.cgroup_pool(ct.store).entries() == [] and NetnsPool(ct.store).entries() == []
    assert not [d for d in os.listdir(ct.store.run / "netns")]
    assert str(ct.store.root) not in Path("/proc/self/mountinfo").read_text()


def test_zygote_forks_the_init_inside_its_pooled_cgroup(store):
    from ctrun.backends import base as backend_base
    from ctrun.runtime import process
    from ctrun.runtime.zygote import Zygote
    from ctrun.state import read_json
    mnt = _mem_mount()
    ct = Ctrun(store, pool=True)
    ct.create("z1", image="busybox", cmd=["sleep", "60"])
    cgp = pools.cgroup_pool(ct.store)
    cgp.fill(1)
    entry = cgp.entries()[0]
    z = Zygote(cgp.procs_files(entry), cgp.mounts)
    cdir = ct.store.container_dir("z1")
    cfg = ct._config(cdir)
    mgr = None
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        assert str(z.pid) in (mnt / PARENT / entry / "ct" / "cgroup.procs").read_text().split()
        mgr, extra = ct._backend(cfg).prepare_start("z1", cdir, cfg)
        assert extra["pool_entry"] == entry
        # renamed with the zygote inside
        assert str(z.pid) in (mnt / mgr.rel / "ct" / "cgroup.procs").read_text().split()
        spec = read_json(cdir / "spec.json")
        bpf = Path(extra["bpf"]).read_bytes() if extra["bpf"] else None
        launched = process.launch(spec, stdio=(devnull, devnull, devnull), bpf=bpf, zygote=z)
        launched.start()
        with pytest.raises(ChildProcessError):   # the zygote was the intermediate: reaped
            os.waitpid(z.pid, os.WNOHANG)
        assert re.search(r":memory:/" + re.escape(mgr.rel) + "/ct$",
                         Path(f"/proc/{launched.pid}/cgroup").read_text(), re.M)
        assert Path(f"/proc/{launched.pid}/cmdline").read_bytes().startswith(b"sleep")
    finally:
        os.close(devnull)
        z.discard()
        (mgr or backend_base.manager(cfg)).discard()
        pools.drain(ct.store)


def test_parked_zygote_launches_an_attached_run(store):
    mnt = _mem_mount()
    ct = Ctrun(store, pool=True)
    pools.fill(ct.store, 1)
    try:
        assert pools.park(ct.store) == 1
        (entry, z), = pools.ZYGOTES.items()
        assert str(z.pid) in (mnt / PARENT / entry / "ct" / "cgroup.procs").read_text().split()
        assert ct.run("busybox", ["true"], name="zr", rm=True, net="none") == 0
        assert pools.ZYGOTES == {} and z.sock is None    # handed the start
        with pytest.raises(ChildProcessError):            # and reaped as the intermediate
            os.waitpid(z.pid, os.WNOHANG)
        pools.fill(ct.store, 1)
        pools.park(ct.store)
    finally:
        pools.drain(ct.store)
    assert pools.ZYGOTES == {}


def test_a_parked_zygote_takes_the_starts_umask_and_limits(store, capfd):
    """A zygote is forked when the pool is filled; the start it serves has the caller's
    umask and resource limits of that moment, as a fork of the caller would."""
    import resource
    _mem_mount()
    ct = Ctrun(store, pool=True)
    pools.fill(ct.store, 1)
    umask = os.umask(0o027)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        os.umask(umask)
        assert pools.park(ct.store) == 1
        os.umask(0o027)
        resource.setrlimit(resource.RLIMIT_NOFILE, (123, limits[1]))
        capfd.readouterr()
        assert ct.run("busybox", ["sh", "-c", "umask; ulimit -n"], name="zu", rm=True,
                      net="none") == 0
        assert capfd.readouterr().out.split() == ["0027", "123"]
        assert pools.ZYGOTES == {}   # it served this start
    finally:
        os.umask(umask)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        pools.drain(ct.store)


def test_a_start_whose_parked_zygote_died_forks_its_own_intermediate(store):
    _mem_mount()
    ct = Ctrun(store, pool=True)
    pools.fill(ct.store, 1)
    try:
        assert pools.park(ct.store) == 1
        (entry, z), = pools.ZYGOTES.items()
        os.kill(z.pid, signal.SIGKILL)
        os.waitpid(z.pid, 0)
        assert ct.run("busybox", ["true"], name="zd", rm=True, net="none") == 0
    finally:
        pools.drain(ct.store)


def _entries(store):
    """(cgroup entries, network namespace entries) of a store's pools."""
    return pools.cgroup_pool(store).entries(), NetnsPool(store).entries()


def test_the_servers_spare_fills_the_pools_and_its_starts_take_them(store, cli):
    mnt = _mem_mount()
    st = Ctrun(store).store
    cli("image", "build", "busybox", check=True)   # in-process: the store did not exist
    cli("list", check=True)                        # its server, whose spare fills them
    cg, ns = until(lambda: all(_entries(st)) and _entries(st), what="the pools' entries")
    cg_ino, ns_ino = os.stat(mnt / PARENT / cg[0]).st_ino, os.stat(ns[0]).st_ino
    cli("run", "-d", "--name", "p", "--net", "none", "busybox", "--", "sleep", "60",
        check=True)
    pid = cli.json("inspect", "p")["pid"]
    # the very cgroup and network namespace the spare made
    assert os.stat(mnt / Ctrun(store).cgroup_manager("p").rel).st_ino == cg_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == ns_ino
    assert cg[0] not in _entries(st)[0] and ns[0] not in _entries(st)[1]
    cli("destroy", "-f", "p", check=True)


def test_the_server_empties_the_pools_when_it_leaves(store, cli):
    _mem_mount()
    st = Ctrun(store).store
    cli("image", "build", "busybox", check=True)
    cli("list", check=True)
    until(lambda: all(_entries(st)), what="the pools' entries")
    server = server_named(store)
    assert server
    os.kill(server, signal.SIGTERM)
    until(lambda: server not in server_pids(store), what="the server's exit")
    assert _entries(st) == ([], [])
    assert str(st.root) not in Path("/proc/self/mountinfo").read_text()


def test_ctrun_pool_0_keeps_the_server_from_filling_them(store, cli, monkeypatch):
    _mem_mount()
    monkeypatch.setenv("CTRUN_POOL", "0")
    st = Ctrun(store).store
    cli("image", "build", "busybox", check=True)
    cli("list", check=True)
    time.sleep(1.5)   # past the longest wait for a quiet host (server.QUIET_MAX_S)
    assert _entries(st) == ([], [])
    cli("run", "--rm", "--net", "none", "busybox", "--", "true", check=True)
    assert _entries(st) == ([], [])
