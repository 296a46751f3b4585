"""The verbs that read containers: what they are (inspect, list), their log records (logs),
their usage counters (stats), and a command's captured output (exec_output, over exec).
Ctrun (ctrun.api) inherits them; they find a container through its _cdir, _config and
_backend."""

import os
import select
import signal
import sys
import time

from . import config as cfgmod, lifecycle
from .backends import base
from .errors import CtrunError
from .lifecycle import State
from .state import status


class ObserveVerbs:
    store = None  # set by Ctrun

    def inspect(self, name):
        return self._describe(name, self._cdir(name))

    def _describe(self, name, cdir, full=True):
        cfg = cfgmod.load(cdir) or cfgmod.Config(name, image=None)
        st, state, live, ex = status(cdir)
        out = {
            "name": name, "image": cfg.image, "mode": cfg.mode,
            "state": st, "pid": live["pid"] if live else None,
            "created_at": cfg.created_at,
            "started_at": state.get("started_at"),
            "finished_at": ex.get("finished_at") if ex else None,
            "exit_code": ex.get("exit_code") if ex else None,
            "exit_reason": ex.get("exit_reason") if ex else None,
        }
        row, detail = self._backend(cfg).describe(
            cdir, cfg, out["pid"] if st == State.RUNNING else None)
        out.update(row)
        if not full:
            return out
        try:
            m = base.manager(cfg)
            paths = m.paths()
        except CtrunError:
            m, paths = None, {}
        out["limits"] = None
        if st == State.RUNNING and m is not None:
            try:
                out["limits"] = m.read_limits()
                if m.frozen():
                    out["state"] = str(State.FROZEN)
            except (CtrunError, OSError):
                out["limits"] = None
        net = cfg.net
        out["network"] = {"name": net.get("network"), "ip": net.get("ip"),
                          "mac": net.get("mac"), "gateway": net.get("gateway"),
                          "veth": net.get("veth"), "publish": net.get("publish", []),
                          "dns": net.get("dns", [])} if net else None
        out.update({"config": cfg.to_dict(), "cgroup": paths, "dir": str(cdir),
                    "log_path": str(cdir / "logs" / "console.log")})
        out.update(detail)
        return out

    def list(self, all=False):
        rows = []
        for n in self.store.container_names():
            cdir = self.store.container_dir(n)
            if not (cdir / cfgmod.FILE).exists():
                continue
            d = self._describe(n, cdir, full=False)
            if all or d["state"] == State.RUNNING:
                rows.append(d)
        return rows

    def logs(self, name, follow=False, out=None, err=None):
        """Write the container's log records to out/err (binary streams)."""
        from .runtime import logfile
        out = out or sys.stdout.buffer
        err = err or sys.stderr.buffer
        cdir = self._cdir(name)
        path = cdir / "logs" / "console.log"

        def emit(line):
            _, stream, full, text = logfile.parse(line)
            (err if stream == "stderr" else out).write(text + (b"\n" if full else b""))
        for p in logfile.files(path):
            with open(p, "rb") as f:
                for line in f:
                    emit(line.rstrip(b"\n"))
        out.flush()
        if not follow:
            return
        pos = path.stat().st_size if path.exists() else 0
        ino = path.stat().st_ino if path.exists() else None
        while True:
            # stopping: reaped, the monitor still recording the exit; followed to its end,
            # so a `logs -f` that returns leaves a stopped container behind it
            running = status(cdir)[0] in (State.RUNNING, State.STOPPING)
            if path.exists():
                st = path.stat()
                if st.st_ino != ino:  # rotated
                    ino, pos = st.st_ino, 0
                if st.st_size > pos:
                    with open(path, "rb") as f:
                        f.seek(pos)
                        data = f.read()
                    complete = data[:data.rfind(b"\n") + 1]
                    pos += len(complete)
                    for line in complete.splitlines():
                        emit(line)
                    out.flush()
                    err.flush()
            if not running:
                return
            time.sleep(0.1)

    def stats(self, names=(), strict=True, only=None):
        """{name: stats} of running containers (all of them when names is empty).

        strict: a named container that is not running is an error; otherwise it (and one
        that stops while being read) is left out.  only: the stat sections to read."""
        out = {}
        for n in names or self.store.container_names():
            cdir = self._cdir(n) if strict and names else self.store.container_dir(n)
            st = status(cdir)[0]
            if not lifecycle.may("stats", st):
                if names and strict:
                    lifecycle.require("stats", n, st)
                continue
            try:
                cfg = self._config(cdir)
                out[n] = base.manager(cfg).stats(only)
                if only is None or "guest" in only:
                    guest = self._backend(cfg).guest_stats(cdir)
                    if guest is not None:
                        out[n]["guest"] = guest
            except CtrunError:
                if strict and names:
                    raise
                out.pop(n, None)
        return out

    def exec_output(self, name, argv, timeout=None, stdin_path=None, **kw):
        """exec with stdout and stderr captured: (exit code, combined output as text).

        stdin_path: a file given to the command as its stdin.  timeout: seconds after which
        the command is killed and CtrunError raised (the lab bounds every command)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.dup2(w, 1)
                os.dup2(w, 2)
                if stdin_path:
                    os.dup2(os.open(stdin_path, os.O_RDONLY), 0)
                    kw["interactive"] = True
                os._exit(self.exec(name, list(argv), **kw))
            except BaseException as e:  # noqa: BLE001 - the parent reads the message
                os.write(2, f"{e}\n".encode())
                os._exit(125)
        os.close(w)
        chunks = []
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([r], [], [], left)[0]:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        kind = self._config(self._cdir(name)).mode
                        raise CtrunError(f"{argv[0]} in {kind} {name} did not finish within "
                                         f"{timeout:.0f} s")
                data = os.read(r, 65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(r)
        _, st = os.waitpid(pid, 0)
        out = b"".join(chunks).decode(errors="replace")  # newlines as a text-mode read gives
        return os.waitstatus_to_exitcode(st), out.replace("\r\n", "\n").replace("\r", "\n")
