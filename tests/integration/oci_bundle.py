"""Bundles and a runc-like caller for the ctrun-oci tests: a busybox root file system, a
config.json from `ctrun-oci spec` adjusted per test, and the runtime run as a client runs
it, with a private --root.  The test process is a child subreaper, as containerd's shim
and conmon are: the containers' inits are reparented to it and reaped by it."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import prctl

from conftest import OCI_ROOTS, stop_oci_server
from ctrun.oci.features import default_spec

REPO = Path(__file__).resolve().parents[2]
RUNTIME = [os.environ.get("CTRUN_OCI_BIN", "/usr/local/bin/ctrun-oci")]
# every state root a test made: the session's leak check reports what is left in them
ROOTS = OCI_ROOTS


def busybox_rootfs(dest):
    """A root file system with the static busybox and its applets in /bin."""
    bin_ = dest / "bin"
    bin_.mkdir(parents=True)
    shutil.copy2("/bin/busybox", bin_ / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in applets:
        if name != "busybox":
            (bin_ / name).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc", "root"):
        (dest / d).mkdir(exist_ok=True)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    return dest


class OCI:
    """ctrun-oci with a private state root, plus bundles made from one busybox rootfs."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.root = tmp / "state"
        ROOTS.append(self.root)
        self.rootfs = busybox_rootfs(tmp / "rootfs")
        self.ids = []
        self.log = tmp / "runtime.log"
        prctl.set_child_subreaper(True)

    def bundle(self, name, args, **changes):
        """A bundle dir whose config.json runs args (no terminal, writable root, a cgroup
        below the test run's parent); `changes` are merged into the top level, and
        process=... / linux=... into those objects."""
        b = self.tmp / name
        b.mkdir()
        conf = default_spec()
        conf["root"] = {"path": str(self.rootfs), "readonly": False}
        conf["process"].update(terminal=False, args=list(args))
        conf["linux"]["cgroupsPath"] = f"/{os.environ['CTRUN_CGROUP_PARENT']}/oci-{name}"
        for k, v in changes.items():
            if isinstance(v, dict) and isinstance(conf.get(k), dict):
                conf[k].update(v)
            else:
                conf[k] = v
        (b / "config.json").write_text(json.dumps(conf))
        return b

    def __call__(self, *args, check=True, input=None, timeout=60, **kw):
        cmd = RUNTIME + ["--root", str(self.root), "--log", str(self.log),
                         "--log-format", "json", *map(str, args)]
        # stdio to files, not pipes: a created container keeps the runtime's stdio as its
        # own (as conmon's pipes), so a pipe would not see EOF until the container exits
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            r = subprocess.run(cmd, stdout=out, stderr=err, text=True, input=input,
                               timeout=timeout, **kw)
            out.seek(0)
            err.seek(0)
            r.stdout, r.stderr = out.read(), err.read()
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}: {r.stderr}")
        return r

    def create(self, cid, bundle, *extra):
        self.ids.append(cid)
        return self("create", "--bundle", bundle, *extra, cid)

    def state(self, cid):
        return json.loads(self("state", cid).stdout)

    def wait_status(self, cid, want, timeout=10):
        end = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st["status"] == want or time.monotonic() > end:
                return st
            reap()
            time.sleep(0.02)

    def cleanup(self):
        for cid in self.ids:
            self("delete", "--force", cid, check=False)
        stop_oci_server(self.root)
        reap()
        prctl.set_child_subreaper(False)   # as the test process was


def reap():
    """Reap every exited child (the inits reparented to this subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_child(pid, timeout=10):
    """The exit status of a reparented init (shell-style code)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not exit")


def leftovers():
    """State directories left in any test's root (a delete that left something)."""
    out = []
    for root in ROOTS:
        if root.is_dir():
            out += [f"ctrun-oci state: {p}" for p in root.iterdir()
                    if not p.name.startswith(".")]
    return out
