"""Compile, cache and install the container seccomp filter (profile in seccomp_profile).

Compiling needs Debian's python3-seccomp (libseccomp); it is imported only when a
program is not already cached, so a normal start reads a small file and loads it.
"""

import ctypes
import errno
import os

from ctrun import libc
from ctrun.errors import HostUnsupported
from ctrun.runtime import seccomp_profile as profile

# Architectures where UNIFIED_NR numbers are valid (libseccomp arch names).
_UNIFIED_ARCHES = {"x86_64", "aarch64", "riscv64", "s390x", "ppc64le"}


def import_seccomp():
    try:
        import seccomp
    except ImportError:
        raise HostUnsupported(
            "python3-seccomp is not installed; run: apt-get install python3-seccomp") from None
    return seccomp


def _relevant_caps(caps):
    """The caps that change the program, normalised (so equal programs share a cache file)."""
    names = {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in caps}
    return sorted(names & profile.CAP_GATED.keys())


def _action(seccomp, spec):
    kind, _, arg = spec.partition(":")
    if kind == "errno":
        return seccomp.ERRNO(getattr(errno, arg))
    return {"allow": seccomp.ALLOW, "kill": seccomp.KILL, "kill_process": seccomp.KILL_PROCESS,
            "trap": seccomp.TRAP, "log": seccomp.LOG}[kind]


def compile_bpf(caps, arch_note=None) -> bytes:
    """Build the classic-BPF program for a container holding `caps`.

    arch_note names a libseccomp architecture ("x86_64", "aarch64") to build for
    instead of the native one; such a program is only good for inspection.
    """
    seccomp = import_seccomp()
    arch_name = arch_note or os.uname().machine
    default = _action(seccomp, profile.DEFAULT_ACTION)
    filt = seccomp.SyscallFilter(default)
    if arch_note and arch_note != os.uname().machine:
        filt.remove_arch(seccomp.Arch.NATIVE)
        filt.add_arch(getattr(seccomp.Arch, arch_note.upper()))
    arch = getattr(seccomp.Arch, arch_name.upper(), seccomp.Arch.NATIVE)
    # A foreign ABI (e.g. i386 via int 0x80) would dodge every rule: kill instead.
    filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    try:
        filt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)  # binary tree: O(log n) per call
    except (AttributeError, RuntimeError, ValueError):
        pass

    native = arch_name == os.uname().machine

    def nr(name):
        """What add_rule takes for this call, or None to skip it (unknown or absent here).

        Names libseccomp knows go in as names (it maps them per arch); a raw number
        is read as a native one, so the UNIFIED_NR fallback is for native builds.
        """
        num = seccomp.resolve_syscall(arch, name)
        if num >= 0:
            return name
        if num == -1 and native and arch_name in _UNIFIED_ARCHES:
            return profile.UNIFIED_NR.get(name)
        return None

    caps = _relevant_caps(caps)
    allowed = set(profile.ALLOW)
    for cap in caps:
        allowed.update(profile.CAP_GATED[cap])

    for name in sorted(allowed):
        if (num := nr(name)) is not None:
            filt.add_rule(seccomp.ALLOW, num)

    ops = {"eq": seccomp.EQ, "lt": seccomp.LT, "masked_eq": seccomp.MASKED_EQ}
    for name, alternatives in profile.ARG_RULES.items():
        if name in allowed or (num := nr(name)) is None:
            continue
        for index, op, *values in alternatives:
            if op == "not_in32":
                for mask, value in _blocks_outside(values, 32):
                    filt.add_rule(seccomp.ALLOW, num,
                                  seccomp.Arg(index, seccomp.MASKED_EQ, mask, value))
            else:
                filt.add_rule(seccomp.ALLOW, num, seccomp.Arg(index, ops[op], *values))

    for name, err in profile.ERRNO_RULES.items():
        if name not in allowed and (num := nr(name)) is not None:
            filt.add_rule(seccomp.ERRNO(getattr(errno, err)), num)

    return export_bpf(filt)


def export_bpf(filt) -> bytes:
    """The program a libseccomp filter compiles to, as bytes (the binding writes only to a
    file, so through a memfd)."""
    fd = os.memfd_create("ctrun-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


def _blocks_outside(excluded, bits):
    """(mask, value) pairs, masks over the low `bits` bits, that together match exactly the
    numbers whose low `bits` bits are not in `excluded`.

    libseccomp cannot give one call an allow rule and a deny rule, nor AND two tests of one
    argument, so "all but these" becomes the aligned blocks around them: one per bit where a
    number first leaves the excluded ones' common prefix (a few dozen for two values)."""
    out = []

    def split(depth, prefix, ex):
        shift = bits - depth
        if not ex:
            out.append((((1 << depth) - 1) << shift, prefix << shift))
        elif depth < bits:
            for bit in (0, 1):
                split(depth + 1, prefix << 1 | bit,
                      [x for x in ex if (x >> (shift - 1)) & 1 == bit])

    split(0, 0, sorted(set(excluded)))
    return out


def _libseccomp_version():
    """The library version without importing the binding (cheap: one dlopen)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "none"
    lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
    return ".".join(map(str, lib.seccomp_version().contents))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def cache_key(caps) -> str:
    """Names the program for `caps`: changes with the profile, this compiler, libseccomp, arch."""
    return compiler_key([profile.__file__, __file__], ",".join(_relevant_caps(caps)).encode())


# ctrun-oci's compiler of runtime-spec profiles (not imported to name it: it loads typing)
OCI_COMPILER = [os.path.join(os.path.dirname(__file__), "seccomp_oci.py"), __file__]


def compiler_key(sources, data=b""):
    """A name for what a program compiled from `data` by the code in `sources` depends on:
    those, libseccomp's version, the kernel (which load flags it knows) and the arch."""
    # crc32 and adler32 of the inputs: this is a cache name, not a security check, and
    # hashlib would load OpenSSL (~3 ms) on every container start
    import zlib
    head, tail = _compiler(tuple(sources))
    crc = zlib.crc32(tail, zlib.crc32(data, zlib.crc32(head)))
    adler = zlib.adler32(tail, zlib.adler32(data, zlib.adler32(head)))
    return f"{crc:08x}{adler:08x}{len(head) + len(data) + len(tail):x}"


_COMPILERS = {}


def _compiler(sources):
    """What compiler_key joins around its data, read once per process: the code that
    compiles is the code this process loaded (a warm server's starts skip ~0.4 ms)."""
    if sources not in _COMPILERS:
        u = os.uname()
        _COMPILERS[sources] = (b"".join(_read(s) + b"\0" for s in sources),
                               b"\0".join((b"", _libseccomp_version().encode(),
                                           u.release.encode(), u.machine.encode())))
    return _COMPILERS[sources]


def bpf_path_for(caps, cache_dir):
    """Path of the cached program for `caps` in cache_dir, compiling and storing it if absent."""
    cache_dir = os.fspath(cache_dir)
    name = f"seccomp-{cache_key(caps)}.bpf"
    path = os.path.join(cache_dir, name)
    try:
        if os.stat(path).st_size % 8 == 0:
            return path
    except FileNotFoundError:
        pass
    data = compile_bpf(caps)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see no file or a whole one, never a partial one
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def bpf_for(caps, cache_dir) -> bytes:
    """The program for `caps`, from cache_dir (a path) if built before, else compiled and stored."""
    return _read(bpf_path_for(caps, cache_dir))


def install(bpf: bytes):
    """Load `bpf` on the calling thread; it is inherited across fork and execve.

    The caller must set no_new_privs first (prctl(PR_SET_NO_NEW_PRIVS, 1)) unless it
    holds CAP_SYS_ADMIN, and must be single-threaded: other threads stay unfiltered.
    Install last, just before execve, since the filter binds the runtime code too.
    """
    try:
        libc.load_seccomp_bpf(bpf)
    except OSError as e:
        if e.errno == errno.EACCES:
            raise OSError(e.errno, "seccomp: set no_new_privs before installing the filter") \
                from None
        raise
