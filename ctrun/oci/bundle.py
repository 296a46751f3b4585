"""An OCI bundle's config.json: loaded, checked, and turned into the runtime spec that
ctrun.runtime.process.launch takes (the shape ctrun/spec.py builds for ctrun's own
containers), its resources into ctrun's cgroup limits, its cgroupsPath into a cgroup.

Every refusal is one line naming the config.json field.  Annotations under "run.ctrun." are
the runtime's own channel to the init: a bundle may not set them.
"""

import json
import os

from ..errors import InvalidInput, NotFound, quote

SPEC_MAJOR = "1"
INTERNAL = "run.ctrun."
MODE_KEY = "ctrun.mode"    # annotation: "container" (the default) or "vm"
MODES = ("container", "vm")

# the process's capability sets, in the runtime-spec's names
CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

# runtime-spec default devices and the pty devices: always allowed by the device cgroup
DEFAULT_DEVICE_RULES = ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                        "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"]


def wants_vm(conf):
    """Whether the annotations ask for VM mode (ctrun.oci.vm): checked here, so that a
    container's create does not load the VM code."""
    mode = (conf.get("annotations") or {}).get(MODE_KEY, "container")
    if mode not in MODES:
        raise InvalidInput(f"config.json annotation {MODE_KEY} {quote(mode)} is not one of "
                           f"{', '.join(MODES)}")
    return mode == "vm"


def _field(cond, text):
    if not cond:
        raise InvalidInput(text)


def load(bundle):
    """(absolute bundle dir, the parsed config.json) or a one-line error."""
    if not bundle:
        bundle = os.getcwd()
    bundle = os.path.abspath(bundle)
    if not os.path.isdir(bundle):
        raise NotFound(f"bundle {quote(bundle)} is not a directory; give the bundle with "
                       "--bundle DIR")
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotFound(f"bundle {quote(bundle)} has no config.json; make one (ctrun-oci "
                       "spec) or give the bundle that holds it with --bundle") from None
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if hasattr(e, "lineno") else ""
        raise InvalidInput(f"{path} is not valid JSON{where}; fix the file") from None
    _field(isinstance(conf, dict), f"{path} must hold a JSON object; fix the file")
    check(conf, bundle)
    return bundle, conf


def check(conf, bundle):
    """The fields a start needs, with their types; the root must not escape the bundle."""
    ver = conf.get("ociVersion")
    _field(isinstance(ver, str) and ver.split(".")[0] == SPEC_MAJOR,
           f"config.json ociVersion {quote(ver)} is not supported; ctrun-oci runs "
           f"runtime-spec {SPEC_MAJOR}.x bundles")
    root = conf.get("root")
    _field(isinstance(root, dict) and isinstance(root.get("path"), str) and root["path"],
           "config.json root.path is missing; give the bundle's root file system directory")
    rootfs_path(bundle, root["path"])
    proc = conf.get("process")
    _field(isinstance(proc, dict), "config.json process is missing; give the process to run")
    check_process(proc, "process")
    _field(isinstance(conf.get("mounts", []), list), "config.json mounts must be a list")
    for i, m in enumerate(conf.get("mounts", [])):
        _field(isinstance(m, dict) and isinstance(m.get("destination"), str)
               and m["destination"].startswith("/"),
               f"config.json mounts[{i}].destination must be an absolute path")
    for k in conf.get("annotations") or {}:
        _field(not str(k).startswith(INTERNAL),
               f"config.json annotation {quote(k)} is reserved for the runtime; remove it")
    linux = conf.get("linux")
    _field(isinstance(linux, dict), "config.json linux is missing; ctrun-oci runs Linux "
                                    "containers only")
    _field(not conf.get("hostname") or isinstance(conf["hostname"], str),
           "config.json hostname must be a string")


def check_process(proc, where):
    args = proc.get("args")
    _field(isinstance(args, list) and args and all(isinstance(a, str) for a in args),
           f"{where}.args is missing or empty; give the command to run")
    cwd = proc.get("cwd", "/")
    _field(isinstance(cwd, str) and cwd.startswith("/"),
           f"{where}.cwd {quote(cwd)} is not an absolute path")
    for e in proc.get("env") or []:
        _field(isinstance(e, str) and "=" in e,
               f"{where}.env entry {quote(e)} is not KEY=VALUE")
    user = proc.get("user") or {}
    _field(isinstance(user.get("uid", 0), int) and isinstance(user.get("gid", 0), int),
           f"{where}.user.uid and gid must be numbers")
    _field(not user.get("username"), f"{where}.user.username is for Windows; give uid and gid")
    caps = proc.get("capabilities") or {}
    for k, v in caps.items():
        _field(k in CAP_SETS, f"{where}.capabilities.{k} is not a capability set; use "
                              f"{', '.join(CAP_SETS)}")
        _field(isinstance(v, list), f"{where}.capabilities.{k} must be a list")
    for k in ("apparmorProfile", "selinuxLabel"):
        _field(not proc.get(k), f"{where}.{k} is set, but ctrun-oci has no AppArmor or "
                                "SELinux support; remove it")


def rootfs_path(bundle, path):
    """root.path made absolute; a relative one must stay inside the bundle (after symlinks)."""
    full = path if os.path.isabs(path) else os.path.join(bundle, path)
    real = os.path.realpath(full)
    if not os.path.isabs(path):
        inside = os.path.realpath(bundle)
        _field(real == inside or real.startswith(inside.rstrip("/") + "/"),
               f"config.json root.path {quote(path)} escapes the bundle; give a directory "
               "inside it, or an absolute path")
    if not os.path.isdir(real):
        raise NotFound(f"config.json root.path {quote(path)} is not a directory; give the "
                       "root file system's directory")
    return real


def process_for(proc):
    """A runtime-spec process made complete for the runtime: every capability set present,
    a cwd, an env, and a user with additionalGids."""
    out = dict(proc)
    caps = proc.get("capabilities") or {}
    out["capabilities"] = {k: list(caps.get(k) or []) for k in CAP_SETS}
    out.setdefault("cwd", "/")
    out["env"] = list(proc.get("env") or [])
    user = dict(proc.get("user") or {})
    user.setdefault("uid", 0)
    user.setdefault("gid", 0)
    out["user"] = user
    out.setdefault("rlimits", [])
    return out


def runtime_spec(conf, bundle, cid):
    """The runtime spec of a bundle: config.json with an absolute root, a complete process
    and the runtime's own annotations (added by the caller: cgroup, fifo, hooks)."""
    spec = json.loads(json.dumps(conf))  # a deep copy
    spec["root"] = dict(conf["root"], path=rootfs_path(bundle, conf["root"]["path"]))
    spec["process"] = process_for(conf["process"])
    spec.setdefault("mounts", [])
    spec.setdefault("hostname", "")
    linux = spec["linux"]
    linux.setdefault("namespaces", [])
    linux.setdefault("maskedPaths", [])
    linux.setdefault("readonlyPaths", [])
    spec["annotations"] = {INTERNAL + "oci": True, INTERNAL + "name": cid,
                           INTERNAL + "stop_signal": "SIGTERM"}
    return spec


# -- cgroups -------------------------------------------------------------------------------
def cgroup_of(conf, cid, systemd=False):
    """(parent, name) of the container's cgroup from linux.cgroupsPath.

    cgroupfs form: "/a/b/name" (relative paths are read the same way); systemd form
    (--systemd-cgroup): "slice:prefix:name", placed where systemd would put that scope."""
    path = (conf.get("linux") or {}).get("cgroupsPath") or ""
    _field(isinstance(path, str), "config.json linux.cgroupsPath must be a string")
    if systemd:
        parts = path.split(":") if path else ["system.slice", "ctrun-oci", cid]
        _field(len(parts) == 3, f"config.json linux.cgroupsPath {quote(path)} is not "
                                "slice:prefix:name, as --systemd-cgroup needs")
        slice_, prefix, name = parts
        slice_ = slice_ or "system.slice"
        # a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice
        stem = slice_[:-len(".slice")] if slice_.endswith(".slice") else slice_
        bits = stem.split("-")
        parent = "/".join("-".join(bits[:i + 1]) + ".slice" for i in range(len(bits))
                          if stem != "-")
        leaf = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix \
            else f"{name}.scope"
        return parent, leaf
    _field(":" not in path, f"config.json linux.cgroupsPath {quote(path)} is in systemd's "
                            "slice:prefix:name form; pass --systemd-cgroup or give a path")
    parts = [p for p in path.split("/") if p]
    for p in parts:
        _field(p not in (".", ".."), f"config.json linux.cgroupsPath {quote(path)} holds "
                                     "'.' or '..'; give a plain path")
    if not parts:
        return "ctrun-oci", cid
    return "/".join(parts[:-1]), parts[-1]


def limits_of(resources, where="linux.resources"):
    """(ctrun Limits fields dict, device allowlist or None, unified {file: value}) of an OCI
    LinuxResources object; a field ctrun cannot apply is refused by name."""
    res = resources or {}
    out = {}
    mem = res.get("memory") or {}
    for k, f in (("limit", "memory"), ("swap", "memory_swap"),
                 ("reservation", "memory_reservation")):
        if mem.get(k) is not None:
            out[f] = int(mem[k])
    for k in ("kernel", "kernelTCP", "swappiness", "disableOOMKiller", "useHierarchy",
              "checkBeforeUpdate"):
        _field(mem.get(k) in (None, False),
               f"config.json {where}.memory.{k} is not supported by ctrun-oci; remove it")
    cpu = res.get("cpu") or {}
    if cpu.get("shares"):
        out["cpu_shares"] = int(cpu["shares"])
    if cpu.get("period"):
        out["cpu_period"] = int(cpu["period"])
    if cpu.get("quota") is not None:
        q = int(cpu["quota"])
        out["cpus"] = -1 if q <= 0 else q / int(cpu.get("period") or 100000)
    if cpu.get("cpus"):
        out["cpuset_cpus"] = str(cpu["cpus"])
    if cpu.get("mems"):
        out["cpuset_mems"] = str(cpu["mems"])
    for k in ("realtimeRuntime", "realtimePeriod", "idle", "burst"):
        _field(not cpu.get(k), f"config.json {where}.cpu.{k} is not supported by ctrun-oci; "
                               "remove it")
    pids = res.get("pids") or {}
    if pids.get("limit") is not None:
        out["pids_limit"] = int(pids["limit"]) if int(pids["limit"]) > 0 else -1
    blk = res.get("blockIO") or {}
    if blk.get("weight"):
        out["blkio_weight"] = int(blk["weight"])
    for k, v in blk.items():
        _field(k == "weight" or not v, f"config.json {where}.blockIO.{k} is not supported by "
                                       "ctrun-oci; remove it")
    for k in ("hugepageLimits", "network", "rdma"):
        _field(not res.get(k), f"config.json {where}.{k} is not supported by ctrun-oci; "
                               "remove it")
    unified = res.get("unified") or {}
    for k in unified:
        _field("/" not in k and not k.startswith(".") and "." in k,
               f"config.json {where}.unified key {quote(k)} is not a cgroup file name")
    return out, device_rules(res.get("devices")), dict(unified)


def device_rules(rules):
    """The device cgroup's allowlist ("c 1:3 rwm", ...) of OCI rules taken in order, or
    None when the spec gives none (every device allowed, as runc leaves it)."""
    if not rules:
        return None
    allow = []
    for i, r in enumerate(rules):
        kind = r.get("type") or "a"
        _field(kind in ("a", "c", "b"), f"config.json linux.resources.devices[{i}].type "
                                        f"{quote(kind)} is not a, c or b")
        major = "*" if r.get("major") in (None, -1) else int(r["major"])
        minor = "*" if r.get("minor") in (None, -1) else int(r["minor"])
        access = r.get("access") or "rwm"
        rule = "a *:* rwm" if kind == "a" else f"{kind} {major}:{minor} {access}"
        if r.get("allow"):
            allow.append(rule)
        elif kind == "a":
            allow = []
        else:
            _field(rule in allow or not any(a.startswith("a ") for a in allow),
                   f"config.json linux.resources.devices[{i}] denies one device after all "
                   "were allowed, which ctrun-oci cannot express; deny all first")
            allow = [a for a in allow if a != rule]
    return allow
