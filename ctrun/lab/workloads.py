"""The workloads: one static helper (helper.c), the same machine code in every mode.

Each workload runs `repeat` times in an instance and yields figures; every loop is
time-bounded and timed inside the instance (CLOCK_MONOTONIC), so neither the exec path
nor a slow emulated guest distorts the arithmetic, only the figure itself."""

import json
import os
import subprocess
from pathlib import Path

from ..errors import CtrunError, HostUnsupported

HERE = Path(__file__).resolve().parent

# figure name -> (title, unit, which is better)
FIGURES = {
    "ready": ("time to ready (start to first command inside)", "s", "lower"),
    "stop": ("time to stop", "s", "lower"),
    "memory": ("host memory per idle instance", "MiB", "lower"),
    "cpu": ("CPU-bound loop (10^6 xorshift steps)", "ms/op", "lower"),
    "getpid": ("getpid() loop", "ns/call", "lower"),
    "openclose": ("open()+close() loop", "ns/pair", "lower"),
    "forkexec": ("fork+exec+wait loop", "ms/op", "lower"),
    "seq_write": ("sequential write, fsync'd (root fs)", "MB/s", "higher"),
    "seq_read": ("sequential read (root fs, page cache)", "MB/s", "higher"),
    "rand_read": ("random 4 KiB reads (root fs)", "kIOPS", "higher"),
    "rand_write": ("random 4 KiB writes (root fs)", "kIOPS", "higher"),
    "net_stream": ("TCP stream host->instance", "Mbit/s", "higher"),
    "net_rr": ("TCP 1-byte round trip instance<->host", "us", "lower"),
    "net_iperf3": ("TCP stream instance->host, iperf3 (where the image has it)", "Mbit/s",
                   "higher"),
    "boot": ("time to a booted server (debian-server: start to is-system-running)", "s",
             "lower"),
    "boot_memory": ("host memory per idle booted server (debian-server)", "MiB", "lower"),
}

# workload name (for --only) -> (description, figures it yields)
WORKLOADS = {
    "lifecycle": ("create untimed, then start to the first command inside, and stop",
                  ("ready", "stop")),
    "memory": ("PSS of every host process serving an idle instance + its cgroup's kernel "
               "memory + its share of the shared monitor", ("memory",)),
    "cpu": ("fixed compute chunks (xorshift), time-bounded", ("cpu",)),
    "getpid": ("getpid() through syscall(2), time-bounded", ("getpid",)),
    "openclose": ("open(\"/bin/sh\") + close(), time-bounded", ("openclose",)),
    "forkexec": ("fork, exec the helper's no-op, wait; time-bounded", ("forkexec",)),
    "fileio": ("a file in the instance's root fs: sequential write+fsync, read, random "
               "4 KiB reads and writes", ("seq_write", "seq_read", "rand_read", "rand_write")),
    "net": ("TCP to a server on the host over the lab bridge (loopback in host mode): "
            "stream throughput and 1-byte round trips, the lab's own static helper at both "
            "ends in every mode", ("net_stream", "net_rr")),
    "iperf3": ("iperf3 client in the instance, iperf3 server on the host, where the "
               "instance has iperf3 (host mode: the host's); otherwise not measured, and why",
               ("net_iperf3",)),
    "density": ("idle instances started one after another: host memory and start time per "
                "instance as the count grows", ()),
    "boot": ("the debian-server image (systemd, sshd, cron, rsyslog) from start to `systemctl "
             "is-system-running` answering running or degraded, then the host memory of the "
             "idle booted server; host mode: not applicable. Off in --quick unless named in "
             "--only: its image comes from your store, or is built once by debootstrap in "
             "the lab's private store (minutes, needs Debian's archive)",
             ("boot", "boot_memory")),
}

# workloads --quick leaves out unless --only names them
QUICK_OFF = ("boot",)
# the booted server's image recipe (images/debian-server)
SERVER_IMAGE = "debian-server"


class Unmeasured(Exception):
    """A figure this instance cannot give (a tool it lacks): recorded with the reason."""


def build_helper(work):
    """Compile helper.c static into the lab's work directory (gcc is in setup.sh's DEBS)."""
    out = Path(work) / "ctrun-lab-helper"
    try:
        r = subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(HERE / "helper.c")],
                           capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise HostUnsupported("the lab builds a static helper with gcc; run: apt-get install "
                              "gcc libc6-dev") from None
    if r.returncode != 0:
        raise HostUnsupported(f"building the lab helper failed: {r.stderr.strip()[-300:]}")
    return out


def parse(out):
    """KEY=VALUE lines of the helper -> dict of strings."""
    kv = {}
    for line in out.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.replace("_", "").isalnum():
            kv[k.strip()] = v.strip()
    return kv


def _run(inst, args, what):
    code, out = inst.exec([inst.helper, *args])
    kv = parse(out)
    if code != 0:
        raise CtrunError(f"{what} in {inst.kind} failed (exit {code}): "
                         f"{out.strip().splitlines()[-1] if out.strip() else 'no output'}")
    return kv


def run(name, inst, secs, lab):
    """One sample of workload `name` in `inst`: {figure: value in the figure's unit}."""
    s = f"{secs:g}"
    if name == "cpu":
        return {"cpu": float(_run(inst, ["cpu", s], name)["ns_per_op"]) / 1e6}
    if name == "getpid":
        return {"getpid": float(_run(inst, ["getpid", s], name)["ns_per_op"])}
    if name == "openclose":
        return {"openclose": float(_run(inst, ["openclose", s, "/bin/sh"], name)["ns_per_op"])}
    if name == "forkexec":
        kv = _run(inst, ["forkexec", s, inst.helper], name)
        return {"forkexec": float(kv["ns_per_op"]) / 1e6}
    if name == "fileio":
        kv = _run(inst, ["fileio", s, inst.root_dir + "ctrun-lab-io.dat", str(lab.io_mb)], name)
        return {"seq_write": float(kv["seq_write_mb_s"]), "seq_read": float(kv["seq_read_mb_s"]),
                "rand_read": float(kv["rand_read_iops"]) / 1000,
                "rand_write": float(kv["rand_write_iops"]) / 1000}
    if name == "net":
        ip, port = lab.server_for(inst)
        kv = _run(inst, ["stream", s, ip, str(port)], name)
        rr = _run(inst, ["rr", s, ip, str(port)], name)
        return {"net_stream": float(kv["mbit_s"]), "net_rr": float(rr["ns_per_op"]) / 1000}
    if name == "iperf3":
        iperf = inst.which("iperf3")
        if not iperf:
            raise Unmeasured(f"iperf3 is not in the {inst.kind}'s image ({lab.image}); the "
                             "helper's net_stream is the comparable figure")
        ip, port = lab.server_for(inst, "iperf3")
        code, out = inst.exec([iperf, "-c", ip, "-p", str(port), "-J", "-t",
                               str(max(1, round(secs)))])
        try:
            bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            raise CtrunError(f"iperf3 in {inst.kind} failed (exit {code}): "
                             f"{out.strip()[-200:]}") from None
        return {"net_iperf3": bps / 1e6}
    raise KeyError(name)


def _free_port(ip):
    import socket
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class _HostServer:
    """A server the lab runs on the host, in a session of its own, for its whole run."""

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)  # the server and its per-connection children
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Iperf3Server(_HostServer):
    """The host's iperf3 (in setup.sh's DEBS)."""

    def __init__(self, ip):
        import shutil
        import socket
        import time
        if not shutil.which("iperf3"):
            raise Unmeasured("iperf3 is not installed on the host; run: apt-get install "
                             "iperf3")
        self.port = _free_port(ip)
        self.proc = subprocess.Popen(["iperf3", "-s", "-B", ip, "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):  # until it listens
            with socket.socket() as s:
                if s.connect_ex((ip, self.port)) == 0:
                    return
            time.sleep(0.05)
        self.close()
        raise CtrunError(f"iperf3 -s did not listen on {ip}")


class Server(_HostServer):
    """The host end of the network workload: the same helper, `serve IP PORT`."""

    def __init__(self, helper, ip):
        self.port = _free_port(ip)
        self.proc = subprocess.Popen([str(helper), "serve", ip, str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        if self.proc.stdout.readline().strip() != b"listening":
            self.close()
            raise CtrunError(f"the lab's TCP server could not listen on {ip}")
