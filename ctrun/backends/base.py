"""The backend interface, and the process machinery both backends share (the cgroup of a
container, signalling its supervised process by pidfd, waiting for its exit record).

A backend owns how a container's process is made, reached and ended; the lifecycle
(ctrun.api) owns the lock, the state checks, the store files and the hand-off to the
monitor, and calls a backend for the rest.  Backends are instantiated per call with the
store and the warning sink, and hold nothing else: all they know of a container is its
directory and its Config.  The verbs are methods with a default for the behaviour the
backends share, so a backend overrides only where it differs (the interface is the list
below, not an abstract class, so a missing override is the shared behaviour, not an error).
"""

import os
import select
import signal
import time

from ..errors import CtrunError, InvalidInput
from ..procs import signal_pid  # noqa: F401 - callers import it from here
from ..state import read_json, write_json


class Backend:
    mode = None
    # the directories a new container's directory gets
    dirs = ("logs",)

    def __init__(self, store, warn=None):
        self.store = store
        self.warn = warn or (lambda message: None)
        self.specs = {}   # container dir -> the spec this object's prepare_start wrote

    # ---- create: check options (before anything is written), then make its files
    def check_create(self, cfg, opts, limits):
        """Refuse create options this backend cannot honour; returns (limits, state for
        prepare).  cfg: the Config being built (its mode is set here); opts: the create
        options as given."""
        cfg.mode = self.mode
        return limits, None

    def prepare(self, tmp, cfg, prepared):
        """Make the backend's own files in the new container directory `tmp`."""

    def abandon(self):
        """A create failed or finished: release what prepare held outside the directory."""

    # ---- start: (cgroup manager, extra monitor request fields); the lifecycle hands off
    def prepare_start(self, name, cdir, cfg, tty=False):
        raise NotImplementedError

    def ready(self, name, cdir, sid):
        """After the hand-off, without the lock: wait until the process is usable."""

    def launch(self, req, cdir, cfg, out_w, err_w, console=None, on_pid=None):
        """In the monitor's launcher: start the process; returns (pid, pid start time,
        an object whose start() lets it run, or None).  on_pid(pid), if the backend can:
        called as soon as the pid is known, while the process still sets up."""
        raise NotImplementedError

    # can the caller supervise the process itself (run without -d: attach, wait_attached)
    attachable = False
    # launch() leaves the workload orphaned (its intermediate has exited), so whichever
    # subreaper is above the launching process (the monitor) has it as a child at once: a
    # warm server's worker may launch it and hand it to the monitor (monitor.start)
    orphans_launch = False
    # is the process a guest kernel (then create's memory and cpus size its RAM and vCPUs)
    guest = False

    def check_host(self, accel="auto"):
        """Refuse (HostUnsupported) when this host cannot run the backend's processes;
        returns (accelerator a start would use, why it is not the one asked for), both None
        where no accelerator applies."""
        return None, None

    def attach(self, name, cdir, cfg, tty, interactive, plumber):
        """Start with the caller as supervisor (called with the lock held); returns what
        wait_attached needs."""
        raise NotImplementedError

    def wait_attached(self, name, cdir, attached, tty, interactive):
        """Relay and wait (without the lock); the workload's exit code."""
        raise NotImplementedError

    # ---- a running process
    def signal(self, cdir, live, signum):
        fd = signal_pid(live, signum)
        if fd is not None:
            os.close(fd)

    def stop(self, name, cdir, cfg, live, timeout):
        raise NotImplementedError

    def exec(self, cdir, cfg, live, argv, **kw):
        raise NotImplementedError

    def login(self, live):
        """The commands `enter` tries in turn: [(argv, exec keywords)]."""
        return [(["/bin/sh", "-l"], {})]

    def guest_stats(self, cdir):
        """Stats of the process's own view (a guest kernel's), or None."""
        return None

    def set_limits(self, name, cdir, cfg, new, running):
        """Apply what the cgroup cannot (a guest's memory); returns what is left for it."""
        return new

    def check_edit(self, name, changes):
        """Refuse set's changes of files inside the container that this backend cannot
        make (changes: {option: given})."""

    def check_template(self, name):
        """Refuse `template` when the container's changes are not files."""

    # ---- queries
    def describe(self, cdir, cfg, pid):
        """Extra inspect fields: ({"accel": ...} for a list row, the rest for inspect);
        pid: the running process's, or None."""
        return {"accel": None}, {"rootfs": str(cdir / "rootfs"), "upper": str(cdir / "upper")}


def manager(cfg):
    """The cgroup manager of a container: the cgroup recorded in its config."""
    from .. import cgroups
    parent, name = cfg.cgroup()
    return cgroups.manager(name, parent=parent)


def discard_cgroup(cfg):
    """Remove a container's cgroup; a name the cgroup layer refuses never had one."""
    try:
        mgr = manager(cfg)
    except InvalidInput:
        return False
    return mgr.discard()


def thaw_if_frozen(cfg):
    try:
        mgr = manager(cfg)
        if mgr.frozen():
            mgr.thaw()
    except (CtrunError, OSError):
        pass


def kill_and_wait(cfg, live, timeout=10):
    """SIGKILL the process and wait up to timeout for it to die."""
    fd = signal_pid(live, signal.SIGKILL)
    if cfg is not None:
        thaw_if_frozen(cfg)  # a frozen task dies only once thawed
    if fd is not None:
        select.select([fd], [], [], timeout)
        os.close(fd)


def request_stop(cdir, state):
    """Record that the running start's end was asked for, so its exit reads "stopped"."""
    write_json(cdir / "state.json", {**state, "stop_requested": state["start_id"]})


def await_exit_record(cdir, sid, timeout=10.0):
    """Wait until the supervisor has written exit.json (cgroup read and removed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex = read_json(cdir / "exit.json")
        if ex and ex.get("start_id") == sid:
            return ex
        time.sleep(0.005)
    return None


def undo_start(store, name, cdir, state, mgr, net):
    """A start that failed: the state it had before, no process, cgroup or rules."""
    from ..network import container as netc
    write_json(cdir / "state.json", state)
    mgr.discard()
    netc.down(store, name, net)
    spec = read_json(cdir / "spec.json") or {}
    if (spec.get("annotations") or {}).get("run.ctrun.netns_pool"):
        from ..network import nspool   # a pooled namespace taken but never joined
        nspool.release_spec(spec)


def image_config(store, image):
    """The image's config; {} when the image is gone (a stop must still work)."""
    from ..images import store as images
    try:
        return images.get(store, image, build_missing=False)[1]
    except CtrunError:
        return {}


def image_config_strict(store, image):
    """The image's config; NotFound when the image is gone."""
    from ..images import store as images
    return images.get(store, image, build_missing=False)[1]
