"""Containers started at host boot (vzctl's ONBOOT=yes).

A container's config says onboot; one systemd unit per store runs `ctrun start --onboot`,
which starts every container of the store marked so.  The unit is written (and enabled
the way `systemctl enable` does it, by its wants link) whenever a container is marked,
also on hosts without systemd, where `ctrun start --onboot` is the boot hook to call from
whatever init runs; it goes when no container of the store is marked any more.
"""

import hashlib
import os
import re
import shutil
import sys

from . import config
from .state import DEFAULT_ROOT

UNIT_DIR = "/etc/systemd/system"


def unit_dir():
    # tests (and packagers building an image) point it elsewhere
    return os.environ.get("CTRUN_SYSTEMD_DIR") or UNIT_DIR


def unit_name(store):
    """ctrun-onboot.service for the default store; another store's unit is named after it,
    so two stores never share (or remove) one unit."""
    if os.path.abspath(store.root) == DEFAULT_ROOT:
        return "ctrun-onboot.service"
    tail = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(str(store.root)))[:40]
    digest = hashlib.sha256(str(store.root).encode()).hexdigest()[:8]
    return f"ctrun-onboot-{tail}-{digest}.service"


def _command(store):
    """ExecStart's argv: the installed ctrun launcher, else this interpreter with -m."""
    exe = shutil.which("ctrun")
    argv = [exe] if exe else [sys.executable, "-m", "ctrun"]
    if os.path.abspath(store.root) != DEFAULT_ROOT:
        argv += ["--root", str(store.root)]
    return argv + ["start", "--onboot"]


def _quote(arg):
    """One ExecStart word: systemd's own quoting (\\, " and % are special to it)."""
    if re.fullmatch(r"[A-Za-z0-9_./:+=@-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def unit_text(store):
    return (
        "# written by ctrun: starts the containers of this store marked --onboot yes\n"
        "[Unit]\n"
        f"Description=ctrun containers marked onboot (store {store.root})\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={' '.join(_quote(a) for a in _command(store))}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n")


def marked(store):
    """Names of the store's containers marked onboot, sorted."""
    out = []
    for n in store.container_names():
        cfg = config.load(store.container_dir(n))
        if cfg and cfg.onboot:
            out.append(n)
    return sorted(out)


def sync(store):
    """Write the store's unit (and its wants link) while a container is marked onboot;
    remove both once none is.  Returns the unit's path."""
    d = unit_dir()
    name = unit_name(store)
    path = os.path.join(d, name)
    wants = os.path.join(d, "multi-user.target.wants")
    link = os.path.join(wants, name)
    if marked(store):
        os.makedirs(wants, mode=0o755, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(unit_text(store))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        if not os.path.islink(link):
            os.symlink(os.path.join("..", name), link)
    else:
        for p in (link, path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    return path
