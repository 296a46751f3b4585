"""sysinfo(2) answered with the container's own figures, by seccomp user notification.

LXCFS gives a container its own /proc/meminfo and /proc/uptime (ctrun.runtime.lxcfs), which
procps reads; busybox's `free` and `uptime`, and glibc's get_phys_pages(), call sysinfo(2)
instead, which the kernel answers with the host's.  So a container that gets LXCFS's views
("run.ctrun.sysinfo" in its spec) also gets a second seccomp filter, which hands its
sysinfo calls to a supervisor (SECCOMP_RET_USER_NOTIF), as Incus's
security.syscalls.intercept.sysinfo does:

- the init installs it just before the workload's exec (install()) and sends the listener
  fd over its channel to the process that launched it, then closes it: no workload code
  ever holds it;
- a command of `ctrun exec` gets one too, before anything else (its channel is read only
  until the pty comes), and the verb hands the listener to the monitor of a detached
  container (op_sysinfo); an attached container's runner has no socket to take it, so
  there exec's commands keep the host's figures;
- the supervisor answers (Listener): the store's monitor for a detached container, which
  watches the fd in its event loop, or the foreground runner of `ctrun run` (serve(), in a
  thread of its own).  An answer is the struct computed from the container's cgroup,
  written into the caller's buffer through /proc/PID/mem.  Anything unexpected is answered
  SECCOMP_USER_NOTIF_FLAG_CONTINUE, i.e. the kernel's own (the host's) figures: a call is
  never left waiting nor failed for the supervisor's sake.

What each field holds (compute()): totalram the memory limit (the smallest along the
cgroup's ancestors, at most the host's RAM), freeram the limit less the cgroup's usage (the
MemFree LXCFS shows), sharedram its shmem; bufferram 0, because LXCFS's meminfo puts the
whole page cache in Cached, which `free` adds to bufferram; totalswap/freeswap the swap
limit (memsw less memory on cgroup v1, memory.swap.max on v2, at most the host's swap) less
its use; procs the tasks of the cgroup (pids.current); uptime the seconds since the
container's init started; loads the host's (LXCFS's per-container load average is only
served to a reader inside the container's pid namespace, which the supervisor is not).

If the supervisor dies, the kernel fails every later sysinfo call in the container with
ENOSYS (the listener's last fd is gone; busybox then prints zeros).  A restarted monitor
cannot take the listener back: nothing outlives the monitor to hold it but the container
itself (which must not), a holder process per container would cost the memory the shared
monitor exists to save, and a new monitor does not supervise the old one's containers
anyway (it cannot reap their inits or pump their logs: they read "monitor-lost").
"""

import errno
import fcntl
import os
import select
import struct

# linux/seccomp.h
_RET_USER_NOTIF = 0x7FC00000
_RET_ALLOW = 0x7FFF0000
_FLAG_NEW_LISTENER = 1 << 3
_FLAG_CONTINUE = 1
# _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp),
# _IOW('!', 2, __u64)
_IOCTL_RECV, _IOCTL_SEND, _IOCTL_ID_VALID = 0xC0502100, 0xC0182101, 0x40082102
_NOTIF = struct.Struct("=QIIiIQ6Q")      # id, pid, flags, then seccomp_data
_RESP = struct.Struct("=QqiI")          # id, val, error, flags

# (AUDIT_ARCH_*, the native sysinfo number) where ctrun runs
_ARCH = {"x86_64": (0xC000003E, 99), "aarch64": (0xC00000B7, 179)}.get(os.uname().machine)


def _bpf():
    """Classic BPF: the native ABI's sysinfo goes to the listener, every other call on (the
    container's main filter judges it, and kills a foreign ABI)."""
    if _ARCH is None:
        return None
    arch, nr = _ARCH
    ld, jeq, ret = 0x20, 0x15, 0x06    # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET

    def op(code, jt, jf, k):
        return struct.pack("=HBBI", code, jt, jf, k)
    return b"".join((op(ld, 0, 0, 4),               # seccomp_data.arch
                     op(jeq, 0, 3, arch),
                     op(ld, 0, 0, 0),               # seccomp_data.nr
                     op(jeq, 0, 1, nr),
                     op(ret, 0, 0, _RET_USER_NOTIF),
                     op(ret, 0, 0, _RET_ALLOW)))


def supported():
    """FLAG_CONTINUE, which every fallback answer needs, came with Linux 5.5: on an older
    kernel a notification could not be handed back, so nothing is intercepted there."""
    if _ARCH is None:
        return False
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 5)


def install():
    """In the container's init, single-threaded, no_new_privs set: load the filter; the
    listener fd (close-on-exec), or None where the kernel cannot do it."""
    from ..kernel import linux
    if not supported():
        return None
    try:
        return linux.seccomp(_bpf(), _FLAG_NEW_LISTENER)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS):
            return None
        raise


_made = None   # see _ctypes()


def _ctypes():
    """(ctypes, the Sysinfo struct, libc), made at the first answer: the store's monitor
    keeps a Listener for each container, and ctypes would cost it ~0.4 MB for good even
    if no container ever called sysinfo(2)."""
    global _made
    if _made is None:
        import ctypes

        class Sysinfo(ctypes.Structure):
            """struct sysinfo of a 64-bit ABI (linux/sysinfo.h; its padding _f is empty
            there)."""
            _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3),
                        ("totalram", ctypes.c_ulong), ("freeram", ctypes.c_ulong),
                        ("sharedram", ctypes.c_ulong), ("bufferram", ctypes.c_ulong),
                        ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong),
                        ("procs", ctypes.c_ushort), ("pad", ctypes.c_ushort),
                        ("totalhigh", ctypes.c_ulong), ("freehigh", ctypes.c_ulong),
                        ("mem_unit", ctypes.c_uint)]
        _made = (ctypes, Sysinfo, ctypes.CDLL(None, use_errno=True))
    return _made


def __getattr__(name):
    if name == "Sysinfo":   # sysinfo.Sysinfo, as if made at the import
        return _ctypes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def host():
    """What compute() takes of the kernel's own answer (this process is not filtered):
    RAM and swap in bytes, and the load averages."""
    ctypes, Sysinfo, libc = _ctypes()
    info = Sysinfo()
    if libc.sysinfo(ctypes.byref(info)) != 0:
        raise OSError(ctypes.get_errno(), "sysinfo")
    unit = info.mem_unit or 1
    return {"totalram": info.totalram * unit, "totalswap": info.totalswap * unit,
            "freeswap": info.freeswap * unit, "loads": tuple(info.loads)}


def compute(host, cg, uptime):
    """The container's struct sysinfo (mem_unit 1) from the host's figures (host()) and its
    cgroup's (Cgroup.read(): limit, usage, swap_limit, swap_usage, shmem, tasks; a limit
    None is none).  Pure, so a unit test can give it any figures."""
    total = host["totalram"] if cg["limit"] is None else min(cg["limit"], host["totalram"])
    swap = host["totalswap"] if cg["swap_limit"] is None \
        else min(cg["swap_limit"], host["totalswap"])
    free_swap = min(host["freeswap"], swap) if cg["swap_usage"] is None \
        else max(0, swap - cg["swap_usage"])
    ctypes, Sysinfo, _ = _ctypes()
    return Sysinfo(uptime=max(0, int(uptime)), loads=(ctypes.c_ulong * 3)(*host["loads"]),
                   totalram=total, freeram=max(0, total - cg["usage"]),
                   sharedram=min(cg["shmem"], total), bufferram=0,
                   totalswap=swap, freeswap=free_swap,
                   procs=min(max(cg["tasks"], 1), 0xFFFF), mem_unit=1)


def _read(path):
    with open(path, "rb") as f:
        return f.read().decode()


def _num(path):
    """A cgroup number; None for "max" (no limit)."""
    text = _read(path).strip()
    return None if text == "max" else int(text)


def _keyed(path, key):
    for line in _read(path).splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def _smallest(leaf, name):
    """The smallest limit in file `name` of leaf and its ancestors (a limit anywhere above
    binds the container too), None if none is set."""
    found, d = None, leaf
    for _ in range(32):
        path = os.path.join(d, name)
        if not os.path.exists(path):
            break
        n = _num(path)
        if n is not None and (found is None or n < found):
            found = n
        d = os.path.dirname(d)
    return found


class Cgroup:
    """The container's cgroup figures, from the leaf its processes were put in (every one
    of them is at or below it) on whichever hierarchy has each controller: on a hybrid host
    memory and pids are v1 and the cgroup2 side carries neither, so each is looked up by
    its own files."""

    def __init__(self, procs_files):
        self.memory = self.pids = None
        for p in procs_files:
            d = os.path.dirname(p)
            if self.memory is None and os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
                self.memory = (d, 1)
            elif self.memory is None and os.path.exists(os.path.join(d, "memory.max")):
                self.memory = (d, 2)
            if self.pids is None and os.path.exists(os.path.join(d, "pids.current")):
                self.pids = d
        if self.memory is None:
            raise LookupError("the container has no memory cgroup")

    def read(self):
        d, version = self.memory
        j = lambda name: os.path.join(d, name)   # noqa: E731
        if version == 1:
            limit = _smallest(d, "memory.limit_in_bytes")
            usage = _num(j("memory.usage_in_bytes"))
            swap_limit = swap_usage = None
            if os.path.exists(j("memory.memsw.usage_in_bytes")):   # swapaccount=1
                memsw = _smallest(d, "memory.memsw.limit_in_bytes")
                if memsw is not None and limit is not None and memsw < 1 << 62:
                    swap_limit = max(0, memsw - limit)
                swap_usage = max(0, _num(j("memory.memsw.usage_in_bytes")) - usage)
            shmem = _keyed(j("memory.stat"), "total_shmem")
            if limit is not None and limit >= 1 << 62:   # v1 writes "no limit" as ~2^63
                limit = None
        else:
            limit = _smallest(d, "memory.max")
            usage = _num(j("memory.current"))
            has_swap = os.path.exists(j("memory.swap.current"))
            swap_limit = _smallest(d, "memory.swap.max") if has_swap else None
            swap_usage = _num(j("memory.swap.current")) if has_swap else None
            shmem = _keyed(j("memory.stat"), "shmem")
        return {"limit": limit, "usage": usage, "swap_limit": swap_limit,
                "swap_usage": swap_usage, "shmem": shmem, "tasks": self._tasks()}

    def _tasks(self):
        if self.pids is not None:
            return _num(os.path.join(self.pids, "pids.current")) or 0
        from ..cgroupfs import subtree   # no pids controller: count the threads
        d, version = self.memory
        name = "tasks" if version == 1 else "cgroup.threads"
        n = 0
        for sub in subtree(d):
            try:
                n += len(_read(os.path.join(sub, name)).split())
            except OSError:
                pass
        return n


def _uptime_since(start_ticks):
    """Seconds since a process started (its start time is in ticks of the boot clock)."""
    import time
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def _writable(maps_fd, addr, size):
    """[addr, addr+size) lies in writable mappings of the mm maps_fd belongs to (what the
    kernel's copy_to_user would accept; /proc/PID/mem alone would also write through a
    read-only mapping)."""
    data = b""
    while chunk := os.read(maps_fd, 1 << 16):
        data += chunk
    end = addr + size
    for line in data.splitlines():
        span, perms = line.split(b" ", 2)[:2]
        lo, hi = (int(x, 16) for x in span.split(b"-"))
        if lo <= addr < hi:
            if perms[1:2] != b"w":
                return False
            if hi >= end:
                return True
            addr = hi    # maps are sorted: the rest must start in the next one
    return False


class Listener:
    """One container's listener fd, answered by its supervisor.

    Listener(fd, init_pid, spec): the fd sent by the init, the init's host pid and the
    container's spec (the cgroup its processes are in).  The caller owns nothing after: the
    listener closes the fd in close()."""

    def __init__(self, fd, init_pid, spec):
        from ..procs import proc_start_time
        self.fd = fd
        self.start = proc_start_time(init_pid)
        try:
            self.cgroup = Cgroup(spec["annotations"].get("run.ctrun.cgroup_procs") or ())
        except (LookupError, OSError):
            self.cgroup = None     # every call then gets the host's figures

    def fileno(self):
        return self.fd

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def answer(self):
        """Answer one pending notification, if any; False once no task of the container can
        call any more (every one has exited): the caller then closes the listener."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        ready = p.poll(0)
        if not ready:
            return True
        if not ready[0][1] & select.POLLIN:
            return False    # POLLHUP: the filter has no task left
        buf = bytearray(_NOTIF.size)   # the kernel wants it zeroed
        try:
            _ioctl(self.fd, _IOCTL_RECV, buf)
        except OSError:
            return True     # ENOENT: the caller was killed after poll
        nid, pid, _, nr, arch, _, addr, *_ = _NOTIF.unpack(buf)
        try:
            error = self._reply(nid, pid, nr, arch, addr)
        except Exception:  # noqa: BLE001 - whatever it is, the call gets the host's answer
            error = None
        resp = _RESP.pack(nid, 0, 0, _FLAG_CONTINUE) if error is None \
            else _RESP.pack(nid, 0, error, 0)
        try:
            _ioctl(self.fd, _IOCTL_SEND, bytearray(resp))
        except OSError:
            pass            # ENOENT: the caller is gone
        return True

    def _reply(self, nid, pid, nr, arch, addr):
        """Write the answer into the caller's buffer: 0, -EFAULT, or None to continue."""
        if (arch, nr) != _ARCH or pid <= 0 or self.cgroup is None or self.start is None:
            return None
        info = bytes(compute(host(), self.cgroup.read(), _uptime_since(self.start)))
        mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            maps = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
            try:
                # both opened while the notification was pending: `pid` was the caller
                # then, and the fds hold its memory whatever the pid names later
                _ioctl(self.fd, _IOCTL_ID_VALID, bytearray(struct.pack("=Q", nid)))
                if not _writable(maps, addr, len(info)):
                    return -errno.EFAULT
                try:
                    written = os.pwrite(mem, info, addr)
                except (OSError, OverflowError):
                    return -errno.EFAULT
                return 0 if written == len(info) else -errno.EFAULT
            finally:
                os.close(maps)
        finally:
            os.close(mem)


def _ioctl(fd, request, buf):
    fcntl.ioctl(fd, request, buf, True)


def serve(fd, init_pid, spec):
    """Answer listener fd in a thread of this process until no task of the container is
    left (the foreground runner's supervisor; the monitor watches it in its event loop).

    The thread blocks every signal, so each one still interrupts the main thread's wait
    (relay, waitpid) and runs its handler at once; and it is started without waiting for it
    to run (threading.Thread.start would): the runner's next step (the terminal's size on
    the container's pty) must not be late for the workload, which has started already."""
    import _thread
    import signal

    def loop():
        listener = None
        try:
            listener = Listener(fd, init_pid, spec)
            p = select.poll()
            p.register(fd, select.POLLIN)
            while True:
                p.poll()
                if not listener.answer():
                    break
        finally:
            listener.close() if listener else os.close(fd)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        _thread.start_new_thread(loop, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
