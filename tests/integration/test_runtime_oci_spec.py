"""The runtime honours a general OCI runtime-spec config (what ctrun-oci hands it): the root
directory as is, only the spec's mounts with their options, /dev and linux.devices,
namespaces joined by path, any uid/gid mappings, the five capability sets, oomScoreAdj,
umask, sysctl, and a one-line refusal of what it cannot do.

Each test launches a busybox root directory through ctrun.runtime.process.launch; the
workload writes what it sees into a directory bound from the test's tmp_path."""

import os
import shutil
import subprocess
import time
import uuid

import prctl
import pytest

from ctrun.errors import ContainerFailed, CtrunError, InvalidInput
from ctrun.runtime import process, rootfs

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]

CAPS = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID",
        "CAP_SYS_CHROOT", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETFCAP",
        "CAP_SETPCAP", "CAP_AUDIT_WRITE", "CAP_NET_RAW", "CAP_FSETID"]


@pytest.fixture
def bundle(tmp_path):
    """(root directory, output directory) of a busybox root file system."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", root / "bin" / name)
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by a mapped or non-root workload too
    return root, out


def oci_spec(root, out, script, **linux):
    return {
        "ociVersion": "1.0.2",
        "root": {"path": str(root), "readonly": False},
        "hostname": "oci",
        "process": {
            "terminal": False, "args": ["/bin/sh", "-c", script], "cwd": "/",
            "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
            "capabilities": {k: list(CAPS) for k in ("bounding", "effective", "permitted")}
            | {"inheritable": [], "ambient": []},
            "noNewPrivileges": True,
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/out", "type": "bind", "source": str(out),
             "options": ["rbind", "rw"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "uts", "ipc",
                                                       "network")],
                  "maskedPaths": ["/proc/kcore", "/sys/firmware"],
                  "readonlyPaths": ["/proc/sys"], **linux},
        "annotations": {"run.ctrun.oci": True, "run.ctrun.cgroup_procs": []},
    }


def run(spec, timeout=30):
    """Check, launch, start and wait for the container; (exit code, its stderr)."""
    rootfs.check_supported(spec)
    err = os.open(os.path.join(os.path.dirname(spec["root"]["path"]), "stderr"),
                  os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open("/dev/null", os.O_RDONLY)
    prctl.set_child_subreaper(1)  # the init is reparented to us when the intermediate exits
    try:
        launched = process.launch(spec, stdio=(null, err, err))
        launched.start()
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(launched.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(launched.pid, 9)
                os.waitpid(launched.pid, 0)
                pytest.fail("the container did not exit")
            time.sleep(0.02)
    finally:
        prctl.set_child_subreaper(0)
        os.close(err)
        os.close(null)
    with open(os.path.join(os.path.dirname(spec["root"]["path"]), "stderr")) as f:
        return process.exit_code(status), f.read()


def mountinfo(text, point):
    """(mount options, fstype, super options, optional fields) of the top mount at point."""
    found = None
    for line in text.splitlines():
        f = line.split()
        if f[4] == point:
            sep = f.index("-")
            found = (f[5].split(","), f[sep + 1], f[sep + 3].split(","), f[6:sep])
    assert found, f"{point} is not mounted:\n{text}"
    return found


def test_only_the_spec_mounts_with_their_options_and_a_readonly_root(bundle, tmp_path):
    root, out = bundle
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("from the host\n")
    # a planted absolute symlink: the mount below it must land inside the root
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    os.symlink(str(hostdir), root / "evil")
    spec = oci_spec(root, out, "cat /proc/self/mountinfo > /out/mountinfo; "
                    "touch /ro/new 2>/dev/null; echo $? > /out/ro_rc; "
                    "touch /newfile 2>/dev/null; echo $? > /out/root_rc; "
                    "cat /ro/file > /out/ro_file; stat -c %a /scratch > /out/scratch_mode; "
                    "ls /sys/fs/cgroup > /out/cgroups")
    spec["root"]["readonly"] = True
    spec["linux"]["namespaces"].append({"type": "cgroup"})
    spec["mounts"] += [
        {"destination": "/ro", "type": "none", "source": str(src), "options": ["bind", "ro",
                                                                           "nosuid"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1770", "size=1m"]},
        {"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs", "options": []},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    code, err = run(spec)
    assert code == 0, err
    info = (out / "mountinfo").read_text()
    opts, _, _, _ = mountinfo(info, "/ro")
    assert "ro" in opts and "nosuid" in opts
    assert (out / "ro_rc").read_text().strip() != "0"
    assert (out / "ro_file").read_text() == "from the host\n"
    opts, fstype, sup, _ = mountinfo(info, "/scratch")
    assert fstype == "tmpfs" and {"nosuid", "nodev"} <= set(opts) and "size=1024k" in sup
    assert (out / "scratch_mode").read_text().strip() == "1770"
    assert "ro" in mountinfo(info, "/")[0]
    assert (out / "root_rc").read_text().strip() != "0"
    assert mountinfo(info, "/dev/mqueue")[1] == "mqueue"
    assert mountinfo(info, "/dev/pts")[1] == "devpts"
    assert "ro" in mountinfo(info, "/sys")[0]
    assert (out / "cgroups").read_text().split()  # the hierarchies are there
    # the symlink was followed inside the root, never to the host directory
    assert mountinfo(info, str(hostdir) + "/x")[1] == "tmpfs"
    assert not (hostdir / "x").exists()
    # only what the spec lists: none of ctrun's own mounts
    points = {line.split()[4] for line in info.splitlines()}
    assert not points & {"/etc/hosts", "/etc/resolv.conf", "/dev/shm", "/etc/hostname"}


def test_default_devices_and_linux_devices(bundle):
    root, out = bundle
    spec = oci_spec(root, out, "for d in null zero full random urandom tty mine fifo; do "
                    "stat -c '%n %F %t:%T %a %u:%g' /dev/$d; done > /out/devices; "
                    "for l in ptmx fd stdin; do readlink /dev/$l; done > /out/links; "
                    "echo hi > /dev/null && head -c 3 /dev/zero | wc -c > /out/zero",
                    devices=[{"path": "/dev/mine", "type": "c", "major": 1, "minor": 7,
                              "fileMode": 0o640, "uid": 7, "gid": 8},
                             {"path": "/dev/fifo", "type": "p", "fileMode": 0o600}])
    code, err = run(spec)
    assert code == 0, err
    lines = (out / "devices").read_text().splitlines()
    assert lines[:6] == [f"/dev/{n} character special file {ma:x}:{mi:x} 666 0:0"
                         for n, ma, mi in rootfs.DEVICES]
    assert lines[6] == "/dev/mine character special file 1:7 640 7:8"
    assert lines[7] == "/dev/fifo fifo 0:0 600 0:0"
    assert (out / "links").read_text().split() == ["pts/ptmx", "/proc/self/fd",
                                                   "/proc/self/fd/0"]
    assert (out / "zero").read_text().strip() == "3"


@pytest.fixture
def netns():
    name = "ctrt-oci-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _host_sysctl(key):
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def test_network_namespace_joined_by_path_with_a_sysctl_in_it(bundle, netns):
    root, out = bundle
    spec = oci_spec(root, out, "stat -L -c %i /proc/self/ns/net > /out/netns; "
                    "cat /proc/sys/net/ipv4/ip_default_ttl > /out/ttl",
                    sysctl={"net.ipv4.ip_default_ttl": "42"})
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/run/netns/{netns}"
    host_ttl = _host_sysctl("net.ipv4.ip_default_ttl")
    code, err = run(spec)
    assert code == 0, err
    assert int((out / "netns").read_text()) == os.stat(f"/run/netns/{netns}").st_ino
    assert (out / "ttl").read_text().strip() == "42"
    # written into the joined namespace, which outlives the container; not the host's
    seen = subprocess.run(["ip", "netns", "exec", netns, "cat",
                           "/proc/sys/net/ipv4/ip_default_ttl"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert seen == "42"
    assert _host_sysctl("net.ipv4.ip_default_ttl") == host_ttl


def test_sysctl_in_new_namespaces_only(bundle):
    root, out = bundle
    spec = oci_spec(root, out, "cat /proc/sys/kernel/shm_rmid_forced "
                    "/proc/sys/net/ipv4/ip_default_ttl > /out/sysctl",
                    sysctl={"kernel.shm_rmid_forced": "1", "net.ipv4.ip_default_ttl": "33"})
    before = _host_sysctl("kernel.shm_rmid_forced"), _host_sysctl("net.ipv4.ip_default_ttl")
    code, err = run(spec)
    assert code == 0, err
    assert (out / "sysctl").read_text().split() == ["1", "33"]
    assert (_host_sysctl("kernel.shm_rmid_forced"),
            _host_sysctl("net.ipv4.ip_default_ttl")) == before


@pytest.mark.parametrize("key", ["kernel.panic", "net/ipv4/ip_forward", "net.ipv4..x"])
def test_a_sysctl_that_is_not_the_container_s_is_refused(bundle, key):
    root, out = bundle
    spec = oci_spec(root, out, "true", sysctl={key: "1"})
    with pytest.raises(InvalidInput, match=f"linux.sysctl key '{key}'"):
        rootfs.check_supported(spec)


def test_a_network_sysctl_without_a_network_namespace_is_refused(bundle):
    root, out = bundle
    spec = oci_spec(root, out, "true", sysctl={"net.ipv4.ip_forward": "1"})
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                   if ns["type"] != "network"]
    with pytest.raises(InvalidInput, match="'net.ipv4.ip_forward' needs the container's own "
                                           "network namespace"):
        rootfs.check_supported(spec)


def test_user_namespace_with_several_uid_and_gid_ranges(bundle):
    root, out = bundle
    maps = [{"containerID": 0, "hostID": 300000, "size": 1000},
            {"containerID": 1000, "hostID": 401000, "size": 64536}]
    spec = oci_spec(root, out, "cat /proc/self/uid_map > /out/uid_map; "
                    "cat /proc/self/gid_map > /out/gid_map; id -u > /out/id; "
                    "stat -c %u /bin/busybox > /out/owner; stat -c %u /bin > /out/bin_owner; "
                    "touch /out/made; cat /proc/sys/kernel/shm_rmid_forced > /out/sysctl",
                    uidMappings=maps, gidMappings=maps,
                    sysctl={"kernel.shm_rmid_forced": "1"})
    spec["linux"]["namespaces"].append({"type": "user"})
    # the root directory is used as is (no idmapped tree): chowned to the mapped root, as
    # podman does; one file left to host root shows unmapped
    for d, dirs, files in os.walk(root):
        for n in [d] + [os.path.join(d, f) for f in dirs + files]:
            os.lchown(n, 300000, 300000)
    os.chown(root / "bin/busybox", 0, 0)
    code, err = run(spec)
    assert code == 0, err
    want = [["0", "300000", "1000"], ["1000", "401000", "64536"]]
    assert [line.split() for line in (out / "uid_map").read_text().splitlines()] == want
    assert [line.split() for line in (out / "gid_map").read_text().splitlines()] == want
    assert (out / "id").read_text().strip() == "0"
    assert (out / "owner").read_text().strip() == "65534"
    assert (out / "bin_owner").read_text().strip() == "0"
    assert (out / "sysctl").read_text().strip() == "1"  # the namespace's root may set it
    assert os.stat(out / "made").st_uid == 300000


def test_five_capability_sets_of_a_non_root_user(bundle):
    root, out = bundle
    spec = oci_spec(root, out, "grep ^Cap /proc/self/status > /out/caps; "
                    "umask > /out/umask; touch /out/f; stat -c %a /out/f > /out/mode; "
                    "cat /proc/self/oom_score_adj > /out/oom")
    spec["process"]["user"] = {"uid": 1000, "gid": 1000, "umask": 0o027,
                               "additionalGids": [2000]}
    spec["process"]["oomScoreAdj"] = 345
    spec["process"]["capabilities"] = {
        "bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL"],
        "effective": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }
    code, err = run(spec)
    assert code == 0, err
    caps = dict(line.split(":\t") for line in (out / "caps").read_text().splitlines())
    caps = {k: int(v, 16) for k, v in caps.items()}
    nbs = 1 << 10
    # across the workload's exec a non-root user keeps its ambient capabilities only
    assert caps == {"CapInh": nbs, "CapPrm": nbs, "CapEff": nbs,
                    "CapBnd": (1 << 0) | nbs | (1 << 5), "CapAmb": nbs}
    assert (out / "umask").read_text().strip() == "0027"
    assert (out / "mode").read_text().strip() == "640"
    assert (out / "oom").read_text().strip() == "345"


@pytest.fixture
def shared_root(bundle, tmp_path):
    """The busybox root on a tmpfs of its own made shared on the host, so that the
    container's view of it can be a slave, a peer or private."""
    root, out = bundle
    mnt = tmp_path / "shared"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(mnt)], check=True)
        shutil.copytree(root, mnt, symlinks=True, dirs_exist_ok=True)
        yield mnt, out
        # nothing the container mounted reached the host through the shared mount
        with open("/proc/self/mountinfo") as f:
            assert [line.split()[4] for line in f].count(str(mnt)) == 1
    finally:
        while os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("prop, field", [(None, "master:"), ("rslave", "master:"),
                                         ("slave", "master:"), ("rprivate", None),
                                         ("rshared", "shared:"), ("shared", "shared:"),
                                         ("runbindable", "unbindable")])
def test_rootfs_propagation(shared_root, prop, field):
    """runc's default for the root is rslave: the host's mounts below it reach it."""
    root, out = shared_root
    spec = oci_spec(root, out, "cat /proc/self/mountinfo > /out/mountinfo")
    if prop:
        spec["linux"]["rootfsPropagation"] = prop
    code, err = run(spec)
    assert code == 0, err
    fields = mountinfo((out / "mountinfo").read_text(), "/")[3]
    if field:
        assert [f for f in fields if f.startswith(field)], fields
        assert not [f for f in fields if f.startswith("shared:" if field == "master:"
                                                      else "master:")], fields
    else:
        assert fields == []


@pytest.mark.parametrize("change, field", [
    (lambda s: s["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt"),
    (lambda s: s["linux"].update(personality={"domain": "LINUX32"}), "linux.personality"),
    (lambda s: s["linux"].update(mountLabel="system_u:object_r:x"), "linux.mountLabel"),
    (lambda s: s["process"].update(apparmorProfile="x"), "process.apparmorProfile"),
    (lambda s: s["process"].update(selinuxLabel="x"), "process.selinuxLabel"),
    (lambda s: s["linux"].update(timeOffsets={"boottime": {"secs": 1}}), "linux.timeOffsets"),
    (lambda s: s["linux"]["namespaces"].append({"type": "time"}), "linux.namespaces type"),
    (lambda s: s["linux"].update(rootfsPropagation="sideways"), "linux.rootfsPropagation"),
    (lambda s: s["process"]["capabilities"]["ambient"].append("CAP_FLY"),
     "process.capabilities.ambient"),
    (lambda s: s["linux"].update(devices=[{"path": "/dev/x", "type": "q"}]),
     "linux.devices entry '/dev/x'"),
    (lambda s: s["linux"].update(namespaces=[{"type": "pid"}, {"type": "mount"}]),
     "hostname needs a new uts namespace"),
])
def test_an_unsupported_field_is_refused_by_its_name(bundle, change, field):
    root, out = bundle
    spec = oci_spec(root, out, "true")
    change(spec)
    with pytest.raises(InvalidInput) as e:
        rootfs.check_supported(spec)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_a_path_that_is_not_a_namespace_is_refused(bundle, tmp_path):
    root, out = bundle
    spec = oci_spec(root, out, "true")
    spec["linux"]["namespaces"][-1]["path"] = "/proc/self/ns/uts"  # network given a uts ns
    with pytest.raises(CtrunError, match="network namespace"):
        run(spec)
    spec["linux"]["namespaces"][-1]["path"] = str(tmp_path / "missing")
    with pytest.raises(InvalidInput, match="cannot open the network namespace"):
        run(spec)


def test_a_failing_mount_is_the_container_s_error(bundle):
    root, out = bundle
    spec = oci_spec(root, out, "true")
    spec["mounts"].append({"destination": "/x", "type": "nosuchfs", "source": "none"})
    with pytest.raises(ContainerFailed, match="preparing the root file system"):
        run(spec)


def test_pid_namespace_joined_by_path(bundle):
    """A pod's shared pid namespace: the init is forked into it (setns before the fork)."""
    root, out = bundle
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
    kids = []
    try:
        deadline = time.monotonic() + 5
        while True:  # the sleep, pid 1 of the new namespace, is unshare's child
            kids = open(f"/proc/{holder.pid}/task/{holder.pid}/children").read().split()
            if kids or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert kids, "unshare did not fork its child"
        spec = oci_spec(root, out, "cat /proc/1/comm > /out/one; echo $$ > /out/me")
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "pid":
                ns["path"] = f"/proc/{kids[0]}/ns/pid"
        code, err = run(spec)
        assert code == 0, err
        assert (out / "one").read_text().strip() == "sleep"
        assert (out / "me").read_text().strip() != "1"
    finally:
        for pid in kids:  # the sleep outlives unshare otherwise
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        holder.kill()
        holder.wait()


@pytest.fixture
def sources_with_submounts(tmp_path):
    """Two host directories, each with a tmpfs mounted on its sub/ holding a marker."""
    made = []
    try:
        for name in ("a", "b"):
            sub = tmp_path / name / "sub"
            sub.mkdir(parents=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(sub)],
                           check=True)
            made.append(sub)
            (sub / "marker").write_text("submount\n")
        yield tmp_path / "a", tmp_path / "b"
    finally:
        for sub in made:
            subprocess.run(["umount", "-l", str(sub)], check=True)


@pytest.mark.parametrize("userns", [False, True])
def test_bind_takes_the_source_mount_alone_and_rbind_its_submounts(bundle,
                                                                 sources_with_submounts,
                                                                 userns):
    root, out = bundle
    a, b = sources_with_submounts
    spec = oci_spec(root, out, "ls /nb/sub > /out/nb; ls /rb/sub > /out/rb")
    spec["mounts"] += [
        {"destination": "/nb", "type": "bind", "source": str(a), "options": ["bind"]},
        {"destination": "/rb", "type": "bind", "source": str(b), "options": ["rbind"]},
    ]
    if userns:
        maps = [{"containerID": 0, "hostID": 300000, "size": 65536}]
        spec["linux"].update(uidMappings=maps, gidMappings=maps)
        spec["linux"]["namespaces"].append({"type": "user"})
        for d, dirs, files in os.walk(root):
            for n in [d] + [os.path.join(d, f) for f in dirs + files]:
                os.lchown(n, 300000, 300000)
    code, err = run(spec)
    assert code == 0, err
    assert (out / "nb").read_text() == ""
    assert (out / "rb").read_text() == "marker\n"


def test_user_namespace_with_a_joined_network_namespace_gets_the_host_sysfs(bundle, netns):
    """sysfs cannot be mounted by a user namespace that does not own the network
    namespace (podman --userns with a pod's network): the host's /sys is bound instead."""
    root, out = bundle
    maps = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    spec = oci_spec(root, out, "cat /proc/self/mountinfo > /out/mountinfo; "
                    "cat /sys/kernel/uevent_seqnum > /out/seqnum",
                    uidMappings=maps, gidMappings=maps)
    spec["linux"]["namespaces"].append({"type": "user"})
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/run/netns/{netns}"
    for d, dirs, files in os.walk(root):
        for n in [d] + [os.path.join(d, f) for f in dirs + files]:
            os.lchown(n, 300000, 300000)
    code, err = run(spec)
    assert code == 0, err
    opts, fstype, _, _ = mountinfo((out / "mountinfo").read_text(), "/sys")
    assert fstype == "sysfs" and {"ro", "nosuid", "nodev", "noexec"} <= set(opts)
    assert (out / "seqnum").read_text().strip().isdigit()
