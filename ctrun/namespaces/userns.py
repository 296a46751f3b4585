"""User namespaces: one private host id range per container, and a root file system whose
owners read right inside it (its tree is made by runtime.rootfs.overlay_tree).

Container root (uid 0) becomes host uid BASE, 65536 ids per container, taken from the
first free slot of ctrun's pool (or of root's /etc/subuid entry when the host has one).
The image's layers stay shared, owned by host root on disk: the container sees them
through idmapped mounts (Linux 5.19+ for overlayfs layers), which show host uid N as
BASE+N, so uid 0 reads as the container's root and nothing is copied.  Containers made
by ctrun versions that copied the image with shifted owners (a `lower` directory) keep
their copy.
"""

from ..errors import Conflict

SIZE = 65536
DEFAULT_POOL = (1 << 20, 1 << 16)  # start, how many ranges: well above regular users' ids


def pool():
    """(start, count) of ranges, from root's /etc/subuid entry or ctrun's default."""
    try:
        with open("/etc/subuid") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in ("root", "0") and int(parts[2]) >= SIZE:
                    return int(parts[1]), int(parts[2]) // SIZE
    except (OSError, ValueError):
        pass
    return DEFAULT_POOL


def allocate(used_bases):
    start, count = pool()
    used = set(used_bases)
    for i in range(count):
        base = start + i * SIZE
        if base not in used:
            return base
    raise Conflict("no free user-namespace id range is left; destroy unused --userns "
                   "containers or enlarge root's range in /etc/subuid")


def write_maps(pid, base):
    """From the parent (host root): map container 0..65535 to host base..base+65535."""
    for kind in ("gid_map", "uid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as f:
            f.write(f"0 {base} {SIZE}\n")


def write_spec_maps(pid, spec_linux):
    """From the parent (host root): an OCI spec's uidMappings and gidMappings, any number
    of ranges each (the kernel takes up to 340 lines)."""
    from ..errors import InvalidInput
    for kind, key in (("gid_map", "gidMappings"), ("uid_map", "uidMappings")):
        lines = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n"
                        for m in spec_linux.get(key) or ())
        if not lines:
            raise InvalidInput(f"linux.{key} is empty but a new user namespace is asked; "
                               "give the id ranges to map")
        try:
            with open(f"/proc/{pid}/{kind}", "w") as f:
                f.write(lines)
        except OSError as e:
            raise InvalidInput(f"linux.{key} cannot be written as the user namespace's "
                               f"{kind} ({e.strerror}): ranges must not overlap and must "
                               "fit the host's ids; fix config.json") from None
