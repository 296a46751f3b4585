"""linux.sysctl: kernel parameters set for the container's own namespaces only.

A key is accepted only when the kernel keeps it per namespace and the container has that
namespace of its own (created or joined); anything else would change the host.
"""

import os

from ..errors import InvalidInput

# the namespace that holds each namespaced sysctl (exact keys, then prefixes)
_IPC_KEYS = {f"kernel.{k}" for k in ("msgmax", "msgmnb", "msgmni", "sem", "shmall", "shmmax",
                                    "shmmni", "shm_rmid_forced")}
_UTS_KEYS = {"kernel.hostname", "kernel.domainname"}
_PREFIXES = (("fs.mqueue.", "ipc"), ("net.", "network"))


def namespace_of(key):
    if key in _IPC_KEYS:
        return "ipc"
    if key in _UTS_KEYS:
        return "uts"
    for prefix, ns in _PREFIXES:
        if key.startswith(prefix):
            return ns
    return None


def check(spec):
    """Refuse, before anything is created, a key that is not a namespaced sysctl of a
    namespace the container has."""
    have = {ns["type"] for ns in spec.get("linux", {}).get("namespaces", [])}
    for key in spec.get("linux", {}).get("sysctl") or {}:
        where = f"linux.sysctl key {key!r}"
        if "/" in key or ".." in key or not key or key.startswith(".") or "\0" in key:
            raise InvalidInput(f"{where} is not a sysctl name; write it dotted, as "
                               "net.ipv4.ip_forward")
        ns = namespace_of(key)
        if ns is None:
            raise InvalidInput(f"{where} is not namespaced: setting it would change the "
                               "host; remove it from config.json")
        if ns not in have:
            raise InvalidInput(f"{where} needs the container's own {ns} namespace; add it "
                               "to linux.namespaces or remove the key")


def write_all(spec, proc_sys="/proc/sys"):
    """Write every linux.sysctl value, through the process's current namespaces."""
    for key, value in (spec.get("linux", {}).get("sysctl") or {}).items():
        path = os.path.join(proc_sys, *key.split("."))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(fd, str(value).encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise InvalidInput(f"linux.sysctl key {key!r}: cannot write {value!r}: "
                               f"{e.strerror}; fix the key or value in config.json") from None
