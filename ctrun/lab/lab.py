"""`ctrun lab`: the same workloads and probes in host, container and VM mode, then a report.

Everything the lab makes lives in a private store under a temp directory (short paths:
QEMU's unix sockets have a 108-byte limit), a cgroup parent, a network and an nftables
table of its own, and is removed on success, error and Ctrl-C."""

import datetime
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .. import backends
from ..errors import CtrunError, HostUnsupported, InvalidInput, NotFound
from . import density, modes as modesmod, probes as probesmod, workloads as wl

MODES = ("host", "container", "vm")
SCHEMA_ID = "ctrun-lab/1"
# how long a server may take to finish booting: a TCG guest boots Debian in ~15 s here
BOOT_TIMEOUT_S = {"container": 120, "vm": 300}
TCG_CAVEAT = ("VMs ran under TCG (software emulation): CPU, syscall and I/O ratios of the VM "
              "column measure QEMU's emulator, not KVM; under KVM a guest runs near host speed")


class Settings:
    """What --quick changes: loop length, file size, counts and budgets."""

    def __init__(self, quick, repeat):
        self.quick = quick
        self.repeat = repeat if repeat is not None else (2 if quick else 3)
        self.secs = 0.3 if quick else 1.0
        self.io_mb = 16 if quick else 64
        self.settle_s = 1.0 if quick else 3.0
        self.counts = [1, 10, 50] if quick else [1, 10, 50, 100, 200]
        self.time_budget = {"host": 60, "container": 60 if quick else 150,
                            "vm": 15 if quick else 90}


def _guest(mode):
    """Does the mode run a guest kernel (whose accelerator the report names)?"""
    return mode in backends.MODES and backends.for_mode(mode).guest


def check_options(modes, only, repeat):
    """Validate before anything is made; returns (modes list, only set or None)."""
    ms = [m.strip() for m in (modes or ",".join(MODES)).split(",") if m.strip()]
    bad = [m for m in ms if m not in MODES]
    if bad or not ms:
        raise InvalidInput(f"unknown mode {bad[0] if bad else '(none)'!r}; choose from "
                           f"{', '.join(MODES)}")
    if repeat is not None and repeat < 1:
        raise InvalidInput(f"--repeat {repeat}: give at least 1")
    sel = None
    if only is not None:
        sel = [n.strip() for n in only.split(",") if n.strip()]
        known = set(wl.WORKLOADS) | set(probesmod.PROBES)
        unknown = [n for n in sel if n not in known]
        if unknown or not sel:
            raise InvalidInput(f"unknown --only name {unknown[0] if unknown else '(none)'!r}; "
                               "see: ctrun lab --list")
        sel = set(sel)
    return list(dict.fromkeys(ms)), sel


def listing():
    lines = ["workloads (figures):"]
    lines += [f"  {n:<14} {d}" for n, (d, _) in wl.WORKLOADS.items()]
    lines.append("probes (isolated / shared / blocked):")
    lines += [f"  {n:<14} {d}" for n, d in probesmod.PROBES.items()]
    return "\n".join(lines)


def _median(v):
    s = sorted(v)
    if not s:
        return None
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def host_facts():
    from .. import __version__
    from ..cgroups import detect
    facts = {"ctrun_version": __version__, "kernel": platform.release(),
             "machine": platform.machine(), "cpus": os.cpu_count(),
             "python": platform.python_version()}
    try:
        facts["ctrun_commit"] = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "--short",
             "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        facts["ctrun_commit"] = None
    model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts["cpu_model"] = model or "unknown (no model name in /proc/cpuinfo)"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                facts["memory_total_kb"] = int(line.split()[1])
    except OSError:
        facts["memory_total_kb"] = None
    try:
        from ..vm import qemu
        facts["qemu_version"] = qemu.version()
    except (CtrunError, OSError):
        facts["qemu_version"] = "not installed"
    lay = detect()
    facts["cgroup_layout"] = {"kind": lay.kind, "v1_controllers": sorted(lay.v1),
                              "v2": str(lay.v2) if lay.v2 else None}
    facts["loadavg_start"] = list(os.getloadavg())
    return facts


def _mem_available_kb():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 1 << 20


class Lab:
    def __init__(self, image="busybox", modes=None, repeat=None, quick=False, only=None,
                 accel="auto", vm_memory="256M", source_root=None):
        self.modes, self.only = check_options(modes, only, repeat)
        self.image, self.accel = image, accel
        self.source_root = source_root  # the user's store: images not built offline come from it
        self.cfg = Settings(quick, repeat)
        self.vm_memory = vm_memory
        self.vm_memory_mb = int(vm_memory.rstrip("M"))
        self.io_mb, self.settle_s = self.cfg.io_mb, self.cfg.settle_s
        self.work = self.store = self.network = self.gateway = None
        self.servers = {}
        self.cgroup_parent = f"ctrun-lab-{os.getpid()}"
        self.marker, self._marker_proc, self._sibling = None, None, {}
        self.current = None
        self.errors = []

    def selected(self, name):
        if self.only is None:
            return not (self.cfg.quick and name in wl.QUICK_OFF)
        return name in self.only

    # ------------------------------------------------------------------ environment
    def setup(self):
        self.work = Path(tempfile.mkdtemp(prefix="ctrun-lab-", dir="/var/tmp"))
        self.store = self.work / "store"
        self._env = {k: os.environ.get(k) for k in ("CTRUN_CGROUP_PARENT", "CTRUN_NFT_TABLE")}
        os.environ["CTRUN_CGROUP_PARENT"] = self.cgroup_parent
        os.environ["CTRUN_NFT_TABLE"] = f"ctrun-lab-{os.getpid()}"
        self.helper = wl.build_helper(self.work)
        self.marker, self._marker_proc = probesmod.host_marker()
        if set(self.modes) & set(backends.MODES):  # the modes ctrun runs
            from ..api import Ctrun
            from ..images import store as images
            ct = Ctrun(self.store)
            try:  # built now, in the private store: an unknown image fails before any run
                images.get(ct.store, self.image)
            except NotFound:
                # an image of the user's store (imported, pulled, debootstrapped): its
                # layers are hard-linked into the private store, not rebuilt
                from ..state import Store
                images.copy_image(Store(self.source_root), ct.store, self.image)
            name = f"lab{os.getpid() % 100000}"
            last = None
            for i in range(40):  # 10.216.0.0/14: clear of the defaults and the tests' nets
                b = (os.getpid() + i * 7) % 1024
                try:
                    net = ct.network_create(name, f"10.{216 + b // 256}.{b % 256}.0/24",
                                            nat=False)
                    self.network, self.gateway = name, net["gateway"]
                    break
                except CtrunError as e:
                    last = e
            else:
                raise HostUnsupported(f"no free subnet for the lab's network: {last}")

    def server_for(self, inst, kind="helper"):
        """The host's TCP server (the helper's, or iperf3) for this instance: loopback for
        host mode, the bridge's gateway otherwise (started on first use: the bridge exists
        once an instance runs)."""
        ip = "127.0.0.1" if inst.kind == "host" else self.gateway
        if (kind, ip) not in self.servers:
            self.servers[kind, ip] = (wl.Server(self.helper, ip) if kind == "helper"
                                      else wl.Iperf3Server(ip))
        return ip, self.servers[kind, ip].port

    def cleanup(self):
        """Tear down everything, in order; each step goes on when an earlier one failed."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut it
        try:
            steps = [self._cleanup_instances, self._cleanup_network, self._cleanup_procs,
                     self._cleanup_cgroups]
            for step in steps:
                try:
                    step()
                except (CtrunError, OSError) as e:
                    self.errors.append(f"cleanup: {e}")
            if self.work:
                shutil.rmtree(self.work, ignore_errors=True)
            for k, v in getattr(self, "_env", {}).items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        finally:
            signal.signal(signal.SIGINT, old)

    def _cleanup_instances(self):
        for inst in self._sibling.values():
            inst.destroy()
        if self.store and (self.store / "containers").exists():
            from ..api import Ctrun
            ct = Ctrun(self.store)
            for n in ct.store.container_names():
                try:
                    ct.destroy(n, force=True)
                except CtrunError as e:
                    self.errors.append(f"cleanup of {n}: {e}")
            deadline = time.monotonic() + 5
            while modesmod.monitor_pids(self.store) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in modesmod.monitor_pids(self.store):
                os.kill(pid, signal.SIGKILL)

    def _cleanup_network(self):
        if self.network:
            from ..api import Ctrun
            Ctrun(self.store).network_rm(self.network)
            self.network = None

    def _cleanup_procs(self):
        for srv in self.servers.values():
            srv.close()
        self.servers = {}
        if self._marker_proc:
            self._marker_proc.kill()
            self._marker_proc.wait()
            self._marker_proc = None

    def _cleanup_cgroups(self):
        from .. import cgroups
        lay = cgroups.detect()
        for name in cgroups.children(self.cgroup_parent, lay):
            cgroups.manager(name, parent=self.cgroup_parent, layout=lay).discard()
        for mnt in list(lay.v1.values()) + ([lay.v2] if lay.v2 else []):
            top = Path(mnt) / self.cgroup_parent
            if top.is_dir():
                top.rmdir()

    # ------------------------------------------------------------------ probes' helpers
    def sibling_check(self):
        """Whether a sibling instance and the host still answer, and how fast."""
        t0 = time.perf_counter()
        subprocess.run(["true"])
        host_ms = (time.perf_counter() - t0) * 1000
        mode = self.current
        sib = self._sibling.get(mode.name)
        if sib is None and mode.name == "container":
            sib = self._sibling[mode.name] = mode.create("sibling")
            sib.start()
        if sib is None:
            return f"host ran true in {host_ms:.0f} ms"
        t0 = time.perf_counter()
        code, _ = sib.exec(["true"])
        ms = (time.perf_counter() - t0) * 1000
        return (f"sibling {'answered' if code == 0 else f'FAILED ({code})'} in {ms:.0f} ms, "
                f"host ran true in {host_ms:.0f} ms")

    # ------------------------------------------------------------------ the run
    def plan_steps(self):
        n = 0
        for _ in self.modes:
            # start, stop, the lifecycle's further repeats, the mode's end
            n += 2 + (self.cfg.repeat if self.selected("lifecycle") else 1)
            n += sum(1 for w in wl.WORKLOADS if w not in ("lifecycle", "density", "boot")
                     and self.selected(w))
            n += self.cfg.repeat if self.selected("boot") else 0
            n += sum(1 for p in probesmod.PROBES if self.selected(p))
            n += len(self.cfg.counts) if self.selected("density") else 0
        return n

    def run(self, progress):
        t_start = time.monotonic()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        res = {"schema": SCHEMA_ID, "started_at": started,
               "options": {"image": self.image, "modes": self.modes,
                           "repeat": self.cfg.repeat, "quick": self.cfg.quick,
                           "only": sorted(self.only) if self.only else None,
                           "seconds_per_loop": self.cfg.secs, "io_mb": self.io_mb,
                           "settle_s": self.settle_s, "vm_memory_mb": self.vm_memory_mb,
                           "density_counts": self.cfg.counts},
               "host": host_facts(), "accel": None, "accel_note": None, "caveats": [],
               "modes": {}, "figures": {}, "memory_detail": {}, "boot_detail": {},
               "density": {},
               "probes": {}, "charts": [], "errors": self.errors}
        for fig, (title, unit, better) in wl.FIGURES.items():
            wname = next(w for w, (_, figs) in wl.WORKLOADS.items() if fig in figs)
            if self.selected(wname):
                res["figures"][fig] = {"title": title, "unit": unit, "better": better,
                                       "workload": wname, "modes": {}}
        for p, title in probesmod.PROBES.items():
            if self.selected(p):
                res["probes"][p] = {"title": title, "modes": {}}
        for m in self.modes:
            self._run_mode(m, res, progress)
        self._ratios(res)
        res["caveats"] += self._caveats(res)
        res["host"]["loadavg_end"] = list(os.getloadavg())
        res["finished_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        res["wall_s"] = round(time.monotonic() - t_start, 2)
        acc = res["accel"]
        res["title"] = ("ctrun lab: " + " vs ".join(
            f"{m} ({acc or 'not run'})" if _guest(m) else m for m in self.modes)
            + f" on {res['host']['cpus']} CPUs, kernel {res['host']['kernel']}")
        return res

    def _unmeasured(self, res, mode, why, accel=None):
        for f in res["figures"].values():
            f["modes"].setdefault(mode, {"samples": [], "median": None, "min": None,
                                         "max": None, "ratio_to_host": None, "accel": accel,
                                         "unmeasured": why})
        for p in res["probes"].values():
            p["modes"].setdefault(mode, {"outcome": "not run", "evidence": why,
                                         "accel": accel, "observed": {}})
        if self.selected("density"):
            res["density"].setdefault(mode, {"accel": accel, "steps": [], "cap": None,
                                             "fit_in_1gib": None, "unmeasured": why})

    def _record(self, res, mode, fig, samples, accel, why=None):
        if fig not in res["figures"]:
            return
        res["figures"][fig]["modes"][mode] = {
            "samples": samples, "median": _median(samples),
            "min": min(samples) if samples else None, "max": max(samples) if samples else None,
            "ratio_to_host": None, "accel": accel,
            "unmeasured": why if not samples else None}

    def _run_mode(self, name, res, progress):
        progress.show(f"{name}: preparing")
        try:
            mode = modesmod.make(self, name)
        except CtrunError as e:
            res["modes"][name] = {"status": "unavailable", "reason": str(e), "accel": None}
            self._unmeasured(res, name, f"{name} mode unavailable here: {e}")
            return
        self.current = mode
        if mode.accel:
            res["accel"], res["accel_note"] = mode.accel, mode.accel_note
        res["modes"][name] = {"status": "measured", "reason": None, "accel": mode.accel}
        acc = mode.accel
        ready, stops = [], []
        main, failed = None, ""
        try:
            main = mode.create("main")
            t0 = time.perf_counter()
            main.start()
            ready.append(time.perf_counter() - t0)
            progress.step(f"{name}: started")
            main.put(str(self.helper), main.helper)
            if self.selected("memory"):
                time.sleep(self.settle_s)
                mems = []
                for _ in range(self.cfg.repeat):
                    mems.append(main.memory())
                    time.sleep(0.3)
                res["memory_detail"][name] = mems
                self._record(res, name, "memory", [m["total_kb"] / 1024 for m in mems], acc)
            for w in wl.WORKLOADS:
                if w in ("lifecycle", "memory", "density", "boot") or not self.selected(w):
                    continue
                progress.show(f"{name}: {w}")
                samples, why = {}, None
                try:
                    for _ in range(self.cfg.repeat):
                        for fig, v in wl.run(w, main, self.cfg.secs, self).items():
                            samples.setdefault(fig, []).append(v)
                except wl.Unmeasured as e:
                    why = str(e)
                except (CtrunError, OSError, KeyError, ValueError) as e:
                    why = f"{w} failed: {e}"
                    self.errors.append(f"{name}: {why}")
                for fig in wl.WORKLOADS[w][1]:
                    self._record(res, name, fig, samples.get(fig, []), acc, why)
                progress.step()
            self._probes(name, main, res, progress, acc)
            t0 = time.perf_counter()
            main.stop()
            stops.append(time.perf_counter() - t0)
            main.destroy()
            main = None
            progress.step(f"{name}: stopped")
            for sib in list(self._sibling):
                self._sibling.pop(sib).destroy()
            for k in range(1, self.cfg.repeat if self.selected("lifecycle") else 1):
                inst = mode.create(f"l{k}")
                try:
                    t0 = time.perf_counter()
                    inst.start()
                    ready.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    inst.stop()
                    stops.append(time.perf_counter() - t0)
                finally:
                    inst.destroy()
                progress.step(f"{name}: lifecycle {k + 1}")
            progress.step()
        except CtrunError as e:
            self.errors.append(f"{name}: {e}")
            self._unmeasured(res, name, f"{name} failed: {e}", acc)
            failed = f": {e}"
        finally:
            if main is not None:
                main.destroy()
        self._record(res, name, "ready", ready, acc, "no start succeeded" + failed)
        self._record(res, name, "stop", stops, acc, "no stop was reached" + failed)
        if self.selected("density"):
            if ready:
                self._density(name, mode, res, progress, ready)
            else:
                self._unmeasured(res, name, f"{name}: no instance started, so no density", acc)
                progress.step(n=len(self.cfg.counts))
        self._boot(name, mode, res, progress)

    def _boot(self, name, mode, res, progress):
        """Time to a booted server and its idle memory: `repeat` servers of the debian-server
        image, one at a time (the mode's other instances are gone by now, so the monitor's
        share is the server's alone), each booted, settled, measured, stopped, destroyed."""
        if not self.selected("boot"):
            return
        acc, times, mems, states, why = mode.accel, [], [], [], None
        if name == "host":
            why = ("not applicable: host mode runs the workloads on the host's own init; it "
                   "has no server of its own to boot")
        else:
            try:
                source = self._server_image(progress)
                res["boot_detail"][name] = {"image": wl.SERVER_IMAGE, "image_source": source,
                                            "states": states, "memory": mems}
                for k in range(self.cfg.repeat):
                    progress.show(f"{name}: booting server {k + 1}")
                    inst = mode.create(f"srv{k}", image=wl.SERVER_IMAGE)
                    try:
                        t0 = time.monotonic()
                        states.append(inst.boot(t0 + BOOT_TIMEOUT_S[name]))
                        dt = time.monotonic() - t0
                        if states[-1] not in modesmod.BOOTED:
                            raise CtrunError(
                                f"server {k + 1} had not booted after "
                                f"{BOOT_TIMEOUT_S[name]} s (is-system-running: {states[-1]})")
                        times.append(dt)
                        time.sleep(self.settle_s)
                        mems.append(inst.memory())
                        inst.stop(timeout=60)  # systemd's clean halt, a power-off in a VM
                    finally:
                        inst.destroy()
                    progress.step(f"{name}: server {k + 1} booted")
            except CtrunError as e:
                why = f"boot failed: {e}"
                self.errors.append(f"{name}: {why}")
        self._record(res, name, "boot", times, acc, why)
        self._record(res, name, "boot_memory", [m["total_kb"] / 1024 for m in mems], acc, why)
        progress.step(n=self.cfg.repeat - len(times))

    def _server_image(self, progress):
        """The server image in the lab's private store, and where it came from: the user's
        store (hard-linked layers), else built here once by debootstrap."""
        from ..api import Ctrun
        from ..images import store as images
        from ..state import Store
        ct = Ctrun(self.store)
        try:
            images.get(ct.store, wl.SERVER_IMAGE, build_missing=False)
            return "the lab's private store (built earlier in this run)"
        except NotFound:
            pass
        try:
            images.copy_image(Store(self.source_root), ct.store, wl.SERVER_IMAGE)
            return "the user's store (layers hard-linked into the lab's private store)"
        except NotFound:
            pass
        progress.show(f"building {wl.SERVER_IMAGE} with debootstrap (once; minutes)")
        images.build(ct.store, wl.SERVER_IMAGE)
        return "built by debootstrap in the lab's private store"

    def _probes(self, name, inst, res, progress, acc):
        wanted = [p for p in probesmod.PROBES if self.selected(p)]
        if not wanted:
            return
        kernel, cache = probesmod.kernel_facts(inst), {}
        for p in wanted:
            progress.show(f"{name}: probe {p}")
            try:
                obs = probesmod.observe(p, inst, self, kernel, cache)
                outcome, ev = probesmod.classify(p, obs)
            except (CtrunError, OSError, KeyError, ValueError, IndexError) as e:
                obs, outcome, ev = {}, "error", f"probe failed: {e}"
                self.errors.append(f"{name}: probe {p}: {e}")
            res["probes"][p]["modes"][name] = {"outcome": outcome, "evidence": ev,
                                               "accel": acc, "observed": obs}
            progress.step()

    def _density(self, name, mode, res, progress, ready):
        fig = res["figures"].get("memory", {}).get("modes", {}).get(name, {})
        # without a memory figure (--only), a guess that errs on the large side
        per_kb = (fig.get("median") or mode.density_guess_mb) * 1024
        start = _median(ready) or 0
        budget_kb = min(_mem_available_kb() // 4, mode.density_budget_gib << 20)
        counts, cap = density.plan(self.cfg.counts, per_kb, start, budget_kb,
                                   self.cfg.time_budget[name])
        skipped = len(self.cfg.counts) - len([c for c in counts if c in self.cfg.counts])
        try:
            res["density"][name] = density.run(self, mode, counts, cap,
                                               lambda lbl: progress.step(lbl),
                                               self.cfg.time_budget[name])
        except CtrunError as e:
            self.errors.append(f"{name}: density: {e}")
            res["density"][name] = {"accel": mode.accel, "steps": [], "cap": cap,
                                    "fit_in_1gib": None, "unmeasured": f"density failed: {e}"}
        progress.step(n=skipped)

    def _ratios(self, res):
        for f in res["figures"].values():
            host = f["modes"].get("host", {}).get("median")
            for m, r in f["modes"].items():
                if host and r["median"] is not None:
                    r["ratio_to_host"] = r["median"] / host

    def _caveats(self, res):
        out = ["timings are from a shared machine; other work on it adds noise, which the "
               "min/max spread shows"]
        if res["accel"] == "tcg":
            out.append(TCG_CAVEAT)
        if res["accel_note"]:
            out.append(res["accel_note"])
        cap = res["density"].get("vm", {}).get("cap")
        if cap:
            out.append(f"VM density {cap['reason']}")
        if "net" in {f["workload"] for f in res["figures"].values()}:
            out.append("network: the lab's own static helper is the client in every mode "
                       "and the server on the host (host mode over loopback), so the modes "
                       "compare; iperf3 runs only where the instance has it")
        if "ready" in res["figures"]:
            out.append("ready and stop time ctrun's Python API calls (Ctrun.start, then a "
                       "first exec; Ctrun.stop) inside the lab's process: the `ctrun` CLI "
                       "adds its interpreter start-up on top")
        if "stop" in res["figures"]:
            out.append("stop: the busybox image's init runs its own shutdown (TERM to all, a "
                       "pause, KILL to all) in a container and in a VM; host mode only ends a "
                       "sleep")
        if "boot" in res["figures"]:
            out.append("boot: ctrun start of the debian-server image (systemd as PID 1) until "
                       "`systemctl is-system-running --wait`, run through ctrun exec, answers "
                       "running or degraded; the idle memory is read after the settle time "
                       "(the same accounting as the memory figure); servers boot one at a "
                       "time, each stopped (a clean systemd halt; a power-off in a VM) and "
                       "destroyed before the next")
        if "seq_read" in res["figures"]:
            out.append("sequential and random reads hit the page cache (an instance cannot "
                       "drop the host's caches); writes are fsync'd")
        return out
