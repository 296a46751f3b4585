#!/usr/bin/python3
"""Networking: start-up of `ctrun run --rm` on a bridged network against `podman run --rm` on
podman's default bridge, and container-to-host TCP throughput over ctrun's veth against the
host's own loopback.

(a) Start-up.  Wall time of the whole command, four arms interleaved with their order
rotating every round (first --warmup rounds discarded), median / p10 / p90:
  ctrun, bridge           ctrun run --rm --net ctbench busybox -- true
  ctrun, --net none       the same without a network: what the network costs ctrun
  podman, bridge          podman run --rm --pull=never IMAGE true (its default network)
  podman, --network none  the same without a network: what the network costs podman
Target: ctrun (bridge) median <= 0.5x podman (bridge) median.  IMAGE is the rootfs of
ctrun's busybox image, tarred and `podman import`ed under a unique tag (no registry, no
network access), so both run the same files.  After every podman run the benchmark waits
(untimed) until podman's background processes for that container (conmon's exit command)
are gone, so they do not spill into the next arm's time.

(b) Throughput.  One detached container (`ctrun run -d --net ctbench --name ipfPID busybox
-- sleep 1000`); the busybox image has no iperf3, so the host's binary runs in the container's
network namespace: `nsenter --net=/proc/PID/ns/net iperf3 -c GATEWAY -t 5 -J` against
`iperf3 -s -B GATEWAY` on the host (container -> veth -> bridge -> host), alternating with
`iperf3 -c 127.0.0.1 -t 5 -J` against `iperf3 -s -B 127.0.0.1` (the host's loopback), for
--iperf-rounds rounds each.  Figures are the receiver's Gbit/s; target: median veth >= 0.8x
median loopback.  A control path runs in the same rounds: a bare veth pair (made with
`ip link`) into a namespace of the benchmark's own, with a link-local /30, no bridge, no
ctrun and no nftables rule, which shows the kernel's own veth cost on this host: ctrun's
path / control is what ctrun adds, control / loopback what no veth-based runtime avoids.  The host side of the veth's byte counter is read around each veth round
to check that the traffic really crossed it.

Isolation.  As every benchmark: a private store and a cgroup parent of its own.  ctrun's
network is a dedicated one, `ctrun network create ctbench --subnet 10.215.0.0/24` (bridge
ct-ctbench), and CTRUN_NFT_TABLE=ctrun-bench keeps its nftables rules out of the host's
`ip ctrun` table, so the host's ctrun0 and its rules are never touched; the benchmark
refuses to start if that bridge or table already exists.  Podman runs as root as the
OCI client tests run it (common.private_podman): private storage root, runroot, tmp_dir
and network config dir, its containers' cgroups below a parent of the benchmark's, and a
containers.conf of its own (CONTAINERS_CONF) because Debian 12's podman 4.3 cannot run
here with its defaults: default_ulimits must be set (root lacks CAP_SYS_RESOURCE in this
kind of sandbox, so podman's own nofile/nproc defaults fail), cgroup_manager = "cgroupfs",
events_logger = "file", runtime = "runc" (crun 1.8 refuses hybrid cgroup hosts), and
network_backend = "netavark".  Rootful podman still writes a few things outside its
storage: /dev/shm/libpod_lock, /run/containers/networks (netavark's IPAM db),
/var/lib/containers/cache, cgroups /libpod_parent, iptables-nft chains NETAVARK* (in tables
`ip nat` / `ip filter`, created if missing), the bridge podman0 while a container runs, and
net.ipv4.ip_forward=1.  Everything of that which did not exist before the benchmark started
is removed at the end (and listed as 'podman host cleanup'); iptables lines are removed only
if they mention NETAVARK and were not there before.  The snapshot and the podman set-up
are the OCI client tests' (tests/integration/oci_clients.py), shared with bench_oci and
bench_scale.  On exit, error, Ctrl-C or SIGTERM the iperf3 servers are killed (they also die with the benchmark: PR_SET_PDEATHSIG), ctrun's
containers are destroyed and its network removed, podman's containers and image removed.

Caveats.
- Podman's time ends when `podman run --rm` exits; work its conmon starts after that (the
  exit command) is not counted (the benchmark waits for it, untimed).  Podman keeps its
  state in a fresh private store holding this one image.  The version measured is what
  Debian 12 ships (podman 4.3.1, netavark 1.4, runc 1.1), printed in the JSON.
- Loopback has an MTU of 65536 and no veth pair or bridge in the path; the veth and the
  bridge have an MTU of 1500 (segmentation offload still hands larger TCP buffers through
  the veth, so the MTU alone does not set the rate).  Both iperf3 ends share the host's
  CPUs (2 here): the sender runs at ~100% of a CPU, so the figures are CPU-bound and move
  with anything else running.  Each round's TCP retransmits and the kernel's backlog drops
  (/proc/net/softnet_stat) are in the JSON: the veth path retransmits, loopback does not.
- Wall-clock figures on a shared machine: compare runs from the same host; p10/p90 and the
  per-round ratios show the spread.
Run as root:  benchmarks/bench_network.py [--runs 20] [--warmup 3] [--iperf-time 5]
              [--iperf-rounds 3] [--subnet 10.215.0.0/24] [--no-podman]
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_VS_PODMAN = 0.5
TARGET_VS_LOOPBACK = 0.8
NET_NAME = "ctbench"
BRIDGE = "ct-" + NET_NAME          # ctrun's bridge name for a network NAME (ct-NAME)
NFT_TABLE = "ctrun-bench"
DEFAULT_SUBNET = "10.215.0.0/24"
# unique: ctrun names a container's host-side veth after the container name alone, so an
# "ipf" in another store on this host would collide with ours
IPF_NAME = f"ipf{os.getpid()}"
# the control path: a bare veth pair into a namespace of the benchmark's own, no bridge, no
# ctrun, no nftables rule: the kernel's own veth cost, which no runtime can go below
CONTROL_NS = f"ctbench-veth{os.getpid()}"
CONTROL_IF = f"ctbv{os.getpid() % 100000}"
CONTROL_HOST, CONTROL_PEER = "169.254.215.1", "169.254.215.2"  # link-local /30: never routed

def run(argv, timeout=60, env=None, check=False):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{shlex.join(argv)}` failed ({p.returncode}): "
                           f"{p.stderr.strip() or p.stdout.strip()}")
    return p


# ------------------------------------------------------------------ host state
def nft_tables():
    p = run(["nft", "-j", "list", "tables"])
    if p.returncode != 0:
        return set()
    return {(o["table"]["family"], o["table"]["name"])
            for o in json.loads(p.stdout).get("nftables", []) if "table" in o}


def links():
    return set(os.listdir("/sys/class/net"))


# ------------------------------------------------------------------ (a) start-up
def probe_addr(argv, env=None):
    """Run `... ip -o -4 addr show eth0` once: (True, "ADDR/LEN") or (False, message)."""
    try:
        p = run(argv, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return False, "timed out after 120s"
    if p.returncode == 0 and "inet " in p.stdout:
        return True, p.stdout.split("inet ")[1].split()[0]
    msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
    return False, (msg[-1] if msg else f"exit code {p.returncode}, no IPv4 address on eth0")


# ------------------------------------------------------------------ (b) throughput
def free_port(addr):
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def listening(addr, port):
    want = f"{int.from_bytes(socket.inet_aton(addr), sys.byteorder):08X}:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in list(f)[1:])


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_server(addr, servers):
    port = free_port(addr)
    p = subprocess.Popen(["iperf3", "-s", "-B", addr, "-p", str(port)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    servers.append(p)
    deadline = time.monotonic() + 5
    while not listening(addr, port):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 -s -B {addr} -p {port} did not start listening")
        time.sleep(0.02)
    return port


def iperf_client(argv, seconds):
    """(Gbit/s received, details) or (None, error message)."""
    try:
        p = run(argv, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {seconds + 30}s"
    try:
        d = json.loads(p.stdout)
    except ValueError:
        return None, (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}")[:300]
    if "error" in d or p.returncode != 0:
        return None, d.get("error", f"exit {p.returncode}")
    end = d["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, {
        "received_bytes": end["sum_received"]["bytes"],
        "sent_gbit_s": end["sum_sent"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits"),
        "cpu_percent": end.get("cpu_utilization_percent")}


def read_counter(ifname, name):
    try:
        return int(Path(f"/sys/class/net/{ifname}/statistics/{name}").read_text())
    except (OSError, ValueError):
        return None


def softnet_dropped():
    """Packets the kernel dropped because a CPU's input backlog (netdev_max_backlog) was
    full, summed over CPUs: the veth hands each frame to that queue, loopback does too."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(ln.split()[1], 16) for ln in f)
    except (OSError, ValueError, IndexError):
        return None


def mtu(ifname):
    try:
        return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())
    except (OSError, ValueError):
        return None


def control_pair(created):
    """The bare veth pair of the control path; names go into `created` for the teardown."""
    run(["ip", "netns", "add", CONTROL_NS], check=True)
    created.append(("netns", CONTROL_NS))
    run(["ip", "link", "add", CONTROL_IF, "type", "veth", "peer", "name", "eth0", "netns",
         CONTROL_NS], check=True)
    created.append(("link", CONTROL_IF))
    for argv in (["ip", "addr", "add", f"{CONTROL_HOST}/30", "dev", CONTROL_IF],
                 ["ip", "link", "set", CONTROL_IF, "up"],
                 ["ip", "-n", CONTROL_NS, "addr", "add", f"{CONTROL_PEER}/30", "dev", "eth0"],
                 ["ip", "-n", CONTROL_NS, "link", "set", "eth0", "up"],
                 ["ip", "-n", CONTROL_NS, "link", "set", "lo", "up"]):
        run(argv, check=True)


def throughput(ws, seconds, rounds, servers, control):
    ws.ctrun_check("run", "-d", "--net", NET_NAME, "--name", IPF_NAME, "busybox", "--",
                   "sleep", "1000")
    info = json.loads(ws.ctrun_check("inspect", IPF_NAME))
    pid, net = info.get("pid"), info.get("network") or {}
    gw, veth = net.get("gateway"), net.get("veth")
    if not pid or not gw or not veth:
        raise RuntimeError(f"ctrun inspect {IPF_NAME}: no pid, network.gateway or "
                           f"network.veth: {json.dumps({'pid': pid, 'network': net})}")
    if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        raise RuntimeError(f"container {IPF_NAME} (pid {pid}) shares the host's network "
                           "namespace")
    control_pair(control)
    port_veth = start_server(gw, servers)
    port_lo = start_server("127.0.0.1", servers)
    port_ctl = start_server(CONTROL_HOST, servers)
    t = str(seconds)
    arms = {
        "container -> host (veth)": ["nsenter", f"--net=/proc/{pid}/ns/net", "iperf3", "-c",
                                     gw, "-p", str(port_veth), "-t", t, "-J"],
        "host loopback": ["iperf3", "-c", "127.0.0.1", "-p", str(port_lo), "-t", t, "-J"],
        "control: bare veth pair": ["ip", "netns", "exec", CONTROL_NS, "iperf3", "-c",
                                    CONTROL_HOST, "-p", str(port_ctl), "-t", t, "-J"],
    }
    details = {n: [] for n in arms}
    errors = {n: [] for n in arms}
    counter = []

    def client(n):
        def run_once(rnd):
            before, drops0 = read_counter(veth, "rx_bytes"), softnet_dropped()
            g, det = iperf_client(arms[n], seconds)
            after, drops1 = read_counter(veth, "rx_bytes"), softnet_dropped()
            if g is None:
                errors[n].append(f"round {rnd}: {det}")
                return None
            if drops0 is not None and drops1 is not None:
                det["softnet_dropped"] = drops1 - drops0
            details[n].append(det)
            if n.endswith("(veth)") and before is not None and after is not None:
                counter.append({"veth_rx_bytes": after - before,
                                "iperf_received_bytes": det["received_bytes"]})
            print(f"  round {rnd + 1}/{rounds}: {n}: {g:.2f} Gbit/s, {det['retransmits']} "
                  f"retransmits", flush=True)
            return g
        return run_once

    # the order flips every round, the first one reversed; per_round: {arm: Gbit/s} of
    # each round, for paired ratios
    gbit, _, per_round = common.rounds({n: client(n) for n in arms}, rounds, 0,
                                       order=lambda names, rnd: common.alternate(names, rnd + 1))
    shown = {
        "container -> host (veth)": f"nsenter --net=/proc/PID/ns/net iperf3 -c {gw} -t {t} -J"
                                    f"   (server: iperf3 -s -B {gw})",
        "host loopback": f"iperf3 -c 127.0.0.1 -t {t} -J   (server: iperf3 -s -B 127.0.0.1)",
        "control: bare veth pair": f"ip netns exec NS iperf3 -c {CONTROL_HOST} -t {t} -J   "
                                   f"(server: iperf3 -s -B {CONTROL_HOST})",
    }
    return {"gbit": gbit, "per_round": per_round, "details": details, "errors": errors,
            "counter": counter, "commands": shown, "gateway": gw,
            "container_ip": net.get("ip"), "veth": veth,
            "mtu": {"lo": mtu("lo"), "veth (host side)": mtu(veth), "bridge": mtu(BRIDGE)}}


# ------------------------------------------------------------------ teardown
class Teardown:
    """One cleanup step, registered first so that it runs after the benchmark's others:
    iperf3 servers, the control path, ctrun's containers and network (podman, with what it
    wrote on the host, goes with the workspace: common.private_podman)."""

    def __init__(self, ws):
        self.ws = ws
        self.servers = []
        self.veths = set()
        self.control = []  # ("netns"|"link", name) of the control path, as created

    def __call__(self):
        for step in (self._servers, self._control, self._ctrun):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                common.warn(f"cleanup step {step.__name__} failed: {e}")

    def _servers(self):
        for p in self.servers:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)

    def _control(self):
        for kind, name in reversed(self.control):
            argv = ["ip", "link", "del", name] if kind == "link" else ["ip", "netns", "del", name]
            if (name in links()) if kind == "link" else os.path.exists(f"/run/netns/{name}"):
                p = run(argv)
                if p.returncode != 0:
                    self.ws.leaks.append(f"control path: `{shlex.join(argv)}` failed: "
                                         f"{p.stderr.strip()}")

    def _ctrun(self):
        ws = self.ws
        for err in ws.destroy_all():
            ws.leaks.append("cleanup: `ctrun destroy --force` failed: "
                            + (err.splitlines() or ["?"])[-1][:200])
        brif = Path("/sys/class/net") / BRIDGE / "brif"
        ports = sorted(os.listdir(brif)) if brif.is_dir() else []
        if ports:
            ws.leaks.append(f"bridge {BRIDGE} still has port(s) {', '.join(ports)} after every "
                            "container was destroyed")
            self.veths.update(ports)
        if (ws.store / "networks" / f"{NET_NAME}.json").exists():
            p = run(ws.ctrun_cmd("network", "rm", NET_NAME), timeout=120)
            if p.returncode != 0:
                ws.leaks.append(f"`ctrun network rm {NET_NAME}` failed: "
                                f"{p.stderr.strip() or p.stdout.strip()}")
        for v in sorted(self.veths):
            if v in links():
                ws.leaks.append(f"veth {v} left after its container was destroyed")
                run(["ip", "link", "del", v])
        if BRIDGE in links():
            ws.leaks.append(f"bridge {BRIDGE} left after `ctrun network rm {NET_NAME}`")
            run(["ip", "link", "del", BRIDGE])
        if ("ip", NFT_TABLE) in nft_tables():
            ws.leaks.append(f"nft table ip {NFT_TABLE} left after ctrun's last network was "
                            "removed")
            run(["nft", "delete", "table", "ip", NFT_TABLE])
        if (ws.store / "run" / "ip_forward.orig").exists():
            ws.leaks.append("ctrun's saved ip_forward value (run/ip_forward.orig) was not "
                            "restored when its last network was removed")


def report_startup(arms, shown, skipped, stats, failed, fail_msgs, kept):
    """(a)'s table and ratios; returns (ratios, verdicts, the network's cost per tool)."""
    print("\n(a) start-up, wall time of the whole command")
    names = ("ctrun, bridge", "ctrun, --net none", "podman, bridge", "podman, --network none")
    common.arm_table("arm", names, stats, failed, shown, [n for n in names if n not in arms])
    common.print_not_measured(skipped)
    for n, msgs in fail_msgs.items():
        for m in msgs[:5]:
            print(f"{n}: failed run, {m}")
    med = {n: s["median_ms"] for n, s in stats.items()}
    ratios, verdicts, net_cost = {}, {}, {}
    print("\nratios of medians:")
    if "ctrun, bridge" in med and "podman, bridge" in med:
        r = med["ctrun, bridge"] / med["podman, bridge"]
        ratios["ctrun bridge / podman bridge"] = r
        verdicts["startup"] = common.print_ratio("ctrun / podman, both bridged", r,
                                                 TARGET_VS_PODMAN, of="podman")
    else:
        why = skipped.get("podman") or "a tool had no successful run"
        verdicts["startup"] = f"not measured: {why}"
        print(f"  ctrun / podman, both bridged: not measured ({why})")
    if "ctrun, --net none" in med and "podman, --network none" in med:
        r = med["ctrun, --net none"] / med["podman, --network none"]
        ratios["ctrun none / podman none"] = r
        common.print_ratio("ctrun / podman, both without a network", r, note="   (context)")
    for tool, a_, b_ in (("ctrun", "ctrun, bridge", "ctrun, --net none"),
                         ("podman", "podman, bridge", "podman, --network none")):
        if a_ in med and b_ in med:
            d = common.spread(common.paired(kept, a_, b_))
            net_cost[tool] = {"difference_of_medians_ms": med[a_] - med[b_], "paired_ms": d}
            print(f"  network cost, {tool}: {med[a_] - med[b_]:+.1f} ms (difference of "
                  f"medians); per-round paired: median {d['median']:+.1f}, p10 "
                  f"{d['p10']:+.1f}, p90 {d['p90']:+.1f} ms")
    return ratios, verdicts, net_cost


def report_throughput(tp, ratios, verdicts):
    """(b)'s table and ratios, added to ratios and verdicts; returns the paths' stats."""
    print("\n(b) TCP throughput, receiver side, Gbit/s")
    tstats = {n: common.spread(v) for n, v in tp["gbit"].items() if v}
    rows = []
    for n, cmd in tp["commands"].items():
        if n in tstats:
            s = tstats[n]
            rows.append([n, f"{s['median']:.2f}", f"{s['p10']:.2f}", f"{s['p90']:.2f}",
                         len(tp["gbit"][n]), len(tp["errors"][n]), cmd])
        else:
            rows.append([n, "-", "-", "-", 0, len(tp["errors"][n]), cmd])
    print(common.table(["path", "median", "p10", "p90", "runs", "failed", "command"], rows))
    for n, errs in tp["errors"].items():
        for e in errs[:5]:
            print(f"{n}: failed, {e}")
    veth_n, lo_n = "container -> host (veth)", "host loopback"
    if veth_n in tstats and lo_n in tstats:
        r = tstats[veth_n]["median"] / tstats[lo_n]["median"]
        ratios["veth / loopback"] = r
        print()
        verdicts["throughput"] = common.print_ratio("veth / loopback", r, TARGET_VS_LOOPBACK,
                                                    ">=", of="loopback")
        pr = [x[veth_n] / x[lo_n] for x in tp["per_round"] if veth_n in x and lo_n in x]
        ratios["veth / loopback, per round"] = [round(x, 3) for x in pr]
        print(f"  per-round ratios (the two paths back to back): "
              f"{', '.join(f'{x:.2f}' for x in pr)}")
        ctl_n = "control: bare veth pair"
        if ctl_n in tstats:
            ctl = tstats[ctl_n]["median"]
            ratios["control / loopback"] = ctl / tstats[lo_n]["median"]
            ratios["veth / control"] = tstats[veth_n]["median"] / ctl
            print(f"  control (bare veth pair, no bridge, no ctrun) / loopback = "
                  f"{ratios['control / loopback']:.2f}x: the kernel's own veth cost here")
            print(f"  ctrun's path / control = {ratios['veth / control']:.2f}x: what ctrun's "
                  f"bridge and rules add")
    else:
        verdicts["throughput"] = "not measured: every iperf3 run of a path failed"
        print(f"\n  veth / loopback: {verdicts['throughput']}")
    print(f"  MTU: lo {tp['mtu']['lo']}, veth {tp['mtu']['veth (host side)']}, bridge "
          f"{tp['mtu']['bridge']}; container {tp['container_ip']} -> gateway {tp['gateway']} "
          f"over host-side veth {tp['veth']}")
    return tstats


# ------------------------------------------------------------------ main
def measure(b):
    a = b.args
    if BRIDGE in links():
        common.die(f"interface {BRIDGE} already exists (another bench_network running, or a "
                   f"leftover: ip link del {BRIDGE})")
    if ("ip", NFT_TABLE) in nft_tables():
        common.die(f"nft table ip {NFT_TABLE} already exists (another bench_network "
                   f"running, or a leftover: nft delete table ip {NFT_TABLE})")
    # ctrun's rules go to a table of their own; the host's `ip ctrun` is never touched
    os.environ["CTRUN_NFT_TABLE"] = NFT_TABLE
    skipped = {}
    peers = b.peers
    if a.no_podman:
        skipped["podman"] = "--no-podman given"
    elif not peers.need("podman", "podman"):
        skipped["podman"] = peers.unavailable["podman"]
    load0 = os.getloadavg()

    with common.Workspace("network") as ws:
        td = Teardown(ws)
        ws.on_cleanup(td)
        rootfs = ws.build_image()
        ws.ctrun_check("network", "create", NET_NAME, "--subnet", a.subnet)

        # ---- probes: each tool runs once, and really is on a bridge
        ok, ctrun_addr = probe_addr(ws.ctrun_cmd("run", "--rm", "--net", NET_NAME, "busybox",
                                                 "--", "ip", "-o", "-4", "addr", "show", "eth0"))
        if not ok:
            raise RuntimeError(f"ctrun run --net {NET_NAME}: {ctrun_addr}")
        podman_addr = None
        pm = None
        if "podman" not in skipped:
            try:
                pm = common.private_podman(ws, {"runc": shutil.which("runc") or "runc"}, rootfs)
                image = pm.images[-1]
                ok, msg = probe_addr(pm.cmd("run", "--rm", *pm.create_args(), "--pull=never",
                                            image, "ip", "-o", "-4", "addr", "show", "eth0"),
                                     env=pm.env)
                pm.settle()
                if not ok:
                    raise RuntimeError(msg)
                podman_addr = msg
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:  # HarnessError too
                peers.fail("podman", e)
                skipped["podman"] = peers.unavailable["podman"]

        ct_cmd = ws.ctrun_cmd("run", "--rm", "--net", NET_NAME, "busybox", "--", "true")
        ct_none = ws.ctrun_cmd("run", "--rm", "--net", "none", "busybox", "--", "true")
        arms = {"ctrun, bridge": (ct_cmd, None), "ctrun, --net none": (ct_none, None)}
        shown = {"ctrun, bridge": f"ctrun run --rm --net {NET_NAME} busybox -- true",
                 "ctrun, --net none": "ctrun run --rm --net none busybox -- true"}
        if "podman" not in skipped:
            run_args = ("run", "--rm", *pm.create_args(), "--pull=never")
            arms["podman, bridge"] = (pm.cmd(*run_args, image, "true"), pm.env)
            arms["podman, --network none"] = (pm.cmd(*run_args, "--network", "none", image,
                                                     "true"), pm.env)
            shown["podman, bridge"] = f"podman run --rm --pull=never {image} true"
            shown["podman, --network none"] = (f"podman run --rm --pull=never --network none "
                                               f"{image} true")

        def settle(arm):
            if arm.startswith("podman"):
                pm.settle()

        print(f"bench_network: (a) {a.runs} runs + {a.warmup} warm-up rounds of "
              f"{', '.join(arms)} (interleaved, order rotating)", flush=True)
        fail_msgs = {n: [] for n in arms}
        samples, failed, kept = common.interleave(arms, a.runs, a.warmup, progress=5,
                                                  settle=settle, messages=fail_msgs)
        ws.check_clean("after the start-up runs")

        print(f"bench_network: (b) iperf3, {a.iperf_rounds} x {a.iperf_time} s per path "
              "(alternating)", flush=True)
        tp = throughput(ws, a.iperf_time, a.iperf_rounds, td.servers, td.control)
        td.veths.add(tp["veth"])
        short = [c for c in tp["counter"]
                 if c["veth_rx_bytes"] < 0.95 * c["iperf_received_bytes"]]
        if short:
            ws.leaks.append("the veth's rx byte counter grew less than iperf3 received in "
                            f"{len(short)} round(s): the traffic may not have crossed it")

        versions = {"podman": common.tool_version(["podman", "--version"]),
                    "netavark": common.tool_version(["/usr/lib/podman/netavark", "--version"]),
                    "runc": common.tool_version(["runc", "--version"]),
                    "iperf3": common.tool_version(["iperf3", "--version"])}
        podman_conf = pm.conf.read_text() if pm else None
        podman_info = None
        if pm and "podman" not in skipped:
            p = run(pm.cmd("info", "--format", "{{.Host.NetworkBackend}} "
                           "{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} "
                           "{{.Store.GraphDriverName}}"), env=pm.env)
            podman_info = p.stdout.strip() or p.stderr.strip()

    stats = {n: common.summary_ms(s) for n, s in samples.items() if s}
    ratios, verdicts, net_cost = report_startup(arms, shown, skipped, stats, failed, fail_msgs,
                                                kept)
    tstats = report_throughput(tp, ratios, verdicts)

    notes = [
        f"ctrun's network: `ctrun network create {NET_NAME} --subnet {a.subnet}` (bridge "
        f"{BRIDGE}) with CTRUN_NFT_TABLE={NFT_TABLE}; removed at the end",
        f"probe addresses: ctrun container {ctrun_addr}"
        + (f", podman container {podman_addr}" if podman_addr else ""),
        "arms rotate their order every round; warm-up rounds are discarded",
        "throughput: receiver-side Gbit/s of one TCP stream, client in the container's "
        "netns (host iperf3 binary via nsenter), server on the host bound to the bridge "
        "gateway; loopback: both ends on the host, 127.0.0.1 (MTU 65536, no bridge/veth); "
        "the sender is CPU-bound (see cpu_percent in the JSON), so the figures follow the "
        "host's load",
    ]
    if "podman" not in skipped:
        notes[2:2] = [
            "both tools run the same files: ctrun's busybox rootfs, tarred and "
            "`podman import`ed",
            "podman: rootful, private --root/--runroot/tmp_dir/network_config_dir in the "
            "workspace, containers.conf (CONTAINERS_CONF) with default_ulimits, "
            "cgroup_manager=cgroupfs, events_logger=file, runtime=runc, "
            f"network_backend=netavark ({podman_info}: backend, runtime, cgroups, storage)",
            "after each podman run the benchmark waits, untimed, for podman's background "
            "processes on its store to finish, so they do not land in the next arm's time"]
    common.print_notes(notes)
    result = {
        "params": {"loadavg_at_start": load0, "runs": a.runs, "warmup": a.warmup,
                   "iperf_time_s": a.iperf_time, "iperf_rounds": a.iperf_rounds, "subnet": a.subnet,
                   "network": NET_NAME, "bridge": BRIDGE, "nft_table": NFT_TABLE},
        "startup": {"commands": shown, "stats": stats, "failures": failed,
                    "failure_messages": fail_msgs, "not_measured": skipped,
                    "peers_unavailable": peers.unavailable,
                    "network_cost": net_cost,
                    "samples_ms": common.samples_ms(samples)},
        "throughput": {"commands": tp["commands"], "stats_gbit_s": tstats,
                       "samples_gbit_s": {n: [round(x, 3) for x in v]
                                          for n, v in tp["gbit"].items()},
                       "details": tp["details"], "errors": tp["errors"],
                       "veth_counter_check": tp["counter"], "mtu": tp["mtu"],
                       "gateway": tp["gateway"], "container_ip": tp["container_ip"],
                       "veth": tp["veth"]},
        "ratios": ratios, "verdicts": verdicts,
        "targets": {"ctrun bridge / podman bridge": f"<= {TARGET_VS_PODMAN}",
                    "veth / loopback": f">= {TARGET_VS_LOOPBACK}"},
        "versions": versions, "podman_containers_conf": podman_conf,
        "podman_info": podman_info, "podman_host_cleanup": pm.cleaned if pm else [],
        "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_network", __doc__, runs=(20, "measured start-ups per arm"),
                     warmup=3, tools=("iperf3", "nsenter", "nft", "ip", "tar"),
                     tool_hint="install it (apt-get install iperf3 util-linux nftables "
                               "iproute2 tar)")
    b.option("--iperf-time", type=int, default=5, min=1, help="seconds per iperf3 run (5)")
    b.option("--iperf-rounds", type=int, default=3, min=1,
             help="iperf3 runs per path, alternating (default 3)")
    b.option("--subnet", default=DEFAULT_SUBNET,
             help=f"subnet of the benchmark's ctrun network (default {DEFAULT_SUBNET})")
    b.option("--no-podman", action="store_true", help="skip the podman arms")
    b.main(measure)
