"""Mount options of an OCI spec (mount(8)'s names) as mount(2) arguments.

An option is a flag to set (ro, nosuid...), a flag to leave clear (rw, suid...), a bind, a
propagation change (which mount(2) takes in a call of its own), or anything else, which
the file system reads from the data string (mode=755, size=65536k, newinstance, gid=5).
"""

from .. import libc

MS_SYNCHRONOUS, MS_DIRSYNC, MS_NODIRATIME = 16, 128, 1 << 11
MS_UNBINDABLE, MS_SHARED, MS_RELATIME = 1 << 17, 1 << 20, 1 << 21
_ATIME = libc.MS_NOATIME | MS_RELATIME | libc.MS_STRICTATIME

# name -> (flags it sets, flags it clears): a later option overrides an earlier one
FLAGS = {
    "ro": (libc.MS_RDONLY, 0), "rw": (0, libc.MS_RDONLY),
    "nosuid": (libc.MS_NOSUID, 0), "suid": (0, libc.MS_NOSUID),
    "nodev": (libc.MS_NODEV, 0), "dev": (0, libc.MS_NODEV),
    "noexec": (libc.MS_NOEXEC, 0), "exec": (0, libc.MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "remount": (libc.MS_REMOUNT, 0),
    "noatime": (libc.MS_NOATIME, _ATIME), "atime": (0, libc.MS_NOATIME),
    "relatime": (MS_RELATIME, _ATIME), "norelatime": (0, MS_RELATIME),
    "strictatime": (libc.MS_STRICTATIME, _ATIME), "nostrictatime": (0, libc.MS_STRICTATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "bind": (libc.MS_BIND, 0), "rbind": (libc.MS_BIND | libc.MS_REC, 0),
    "defaults": (0, 0),
}

PROPAGATION = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | libc.MS_REC,
}


def parse(options):
    """(flags, [propagation flags], data) of a list of mount options; data is None when
    every option was a flag."""
    flags, prop, data = 0, [], []
    for o in options or ():
        if o in FLAGS:
            on, off = FLAGS[o]
            flags = (flags & ~off) | on
        elif o in PROPAGATION:
            prop.append(PROPAGATION[o])
        elif o:
            data.append(o)
    return flags, prop, ",".join(data) or None


def is_bind(m):
    """A bind mount: type "bind", or any type (often "none") with the bind or rbind option."""
    return m.get("type") == "bind" or bool({"bind", "rbind"} & set(m.get("options") or ()))


# the flags a bind takes from a remount after the bind itself (mount(2) ignores them on
# the bind call)
REMOUNT_FLAGS = (libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC |
                 MS_SYNCHRONOUS | MS_DIRSYNC | _ATIME | MS_NODIRATIME)
