"""`ctrun demo`: start a container from the built-in image and show, side by side, what the
container sees and what the host sees."""

import io
import shutil
import subprocess
import sys

PROBES = [
    ("hostname", ["hostname"]),
    ("PID 1", ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"]),
    ("processes", ["sh", "-c", "ps -o pid,comm | head -8"]),
    ("mounts", ["sh", "-c", "cut -d' ' -f2,3 /proc/mounts | head -12"]),
    ("interfaces", ["sh", "-c", "ip -o -4 addr | awk '{print $2, $4}'"]),
    ("capabilities", ["sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"]),
]


def _host(argv):
    busybox = shutil.which("busybox") or "/bin/busybox"
    if argv[0] == "sh":
        argv = [busybox] + argv
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except OSError as e:
        return f"({e.strerror})"


def _side_by_side(title, left, right, width):
    ll = left.expandtabs(4).rstrip("\n").splitlines() or [""]
    rl = right.expandtabs(4).rstrip("\n").splitlines() or [""]
    out = io.StringIO()
    out.write(f"--- {title} " + "-" * max(0, 2 * width + 3 - len(title) - 5) + "\n")
    for i in range(max(len(ll), len(rl))):
        a = ll[i] if i < len(ll) else ""
        b = rl[i] if i < len(rl) else ""
        out.write(f"{a[:width].ljust(width)} | {b[:width]}\n")
    return out.getvalue()


def demo(ct, keep=False, name="demo"):
    from .errors import NotFound
    try:
        ct.destroy(name, force=True)
    except NotFound:
        pass
    ct.create(name, image="busybox", hostname="demo-ct")
    ct.start(name)
    try:
        width = max(30, (shutil.get_terminal_size((100, 20)).columns - 3) // 2)
        print(f"container '{name}' from the built-in busybox image is running.\n")
        print(f"{'CONTAINER'.ljust(width)} | HOST")
        for title, argv in PROBES:
            sys.stdout.write(_side_by_side(title, ct.exec_output(name, argv)[1], _host(argv), width))
        if keep:
            print(f"\ntry: ctrun exec {name} -- ps    ctrun enter {name}    ctrun list")
        else:
            print("\nthe demo container is destroyed now; `ctrun demo --keep` leaves it running")
    finally:
        if not keep:
            ct.destroy(name, force=True)
    return 0
