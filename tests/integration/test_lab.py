"""`ctrun lab` end to end, through the CLI as a user runs it.

One quick host+container run is shared by the module (it costs ~50 s); the VM run is
marked vm and selects a few figures and probes so it boots one VM.  No timing assertions:
figures are checked for presence, units and honesty, not speed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

LAB = [sys.executable, "-m", "ctrun", "lab"]


def lab_leftovers():
    """What any lab run could leave: work dirs, cgroup parents, bridges, nft tables, QEMU."""
    found = [str(p) for p in Path("/var/tmp").glob("ctrun-lab-*")]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob("*/ctrun-lab-*")]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob("ctrun-lab-*")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [ln.split(": ")[1] for ln in links.splitlines() if ": ct-lab" in ln]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [t for t in tables.splitlines() if "ctrun-lab-" in t]
    from ctrun.state import proc_cmdlines
    found += [f"process {pid}" for pid, cmd in proc_cmdlines()
              if b"ctrun-lab-" in cmd and (b"qemu" in cmd or b"ctrun.monitor" in cmd)]
    return found


def run_lab(*args, timeout=600, root=None):
    root = ["--root", str(root)] if root else []
    return subprocess.run([*LAB[:3], *root, *LAB[3:], *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    assert lab_leftovers() == [], "a lab run of someone else is in the way"
    out = tmp_path_factory.mktemp("lab") / "quick"
    r = run_lab("--quick", "--modes", "host,container", "--repeat", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert lab_leftovers() == []
    return out, r, json.loads((out / "results.json").read_text())


def test_quick_run_writes_three_valid_files(quick):
    out, r, res = quick
    from ctrun.lab import schema
    schema.validate(res)
    assert (out / "report.md").read_text().startswith("# ctrun lab: host vs container")
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "src=\"data:image/png;base64," in page
    assert "<img" in page and "src=\"charts/" not in page  # self-contained
    # the terminal summary: a table with every figure and probe
    for word in ("ready (s)", "memory (MiB)", "net_rr (us)", "host processes visible"):
        assert word in r.stdout
    assert res["host"]["cgroup_layout"]["kind"] in ("v1", "v2", "hybrid")
    assert res["host"]["qemu_version"] and res["host"]["cpu_model"]


def test_every_sample_and_every_figure_is_there_or_says_why(quick):
    _, _, res = quick
    from ctrun.lab import workloads
    # --quick leaves out the booted server (its image may need a debootstrap build)
    off = {f for w in workloads.QUICK_OFF for f in workloads.WORKLOADS[w][1]}
    assert off and set(res["figures"]) == set(workloads.FIGURES) - off
    for name, f in res["figures"].items():
        for mode in ("host", "container"):
            r = f["modes"][mode]
            assert r["accel"] is None
            if r["median"] is None:
                assert r["unmeasured"], (name, mode)
            else:
                assert len(r["samples"]) == 2 or name in ("ready", "stop"), (name, mode)
                assert r["min"] <= r["median"] <= r["max"]
        c = f["modes"]["container"]
        if c["median"] is not None and f["modes"]["host"]["median"]:
            assert c["ratio_to_host"] == pytest.approx(c["median"] / f["modes"]["host"]["median"])
    d = res["density"]["container"]
    assert [s["count"] for s in d["steps"]] == [1, 10, 50] and d["fit_in_1gib"] > 0
    assert sum(len(s["start_s"]) for s in d["steps"]) == 50


def test_charts_are_pngs_showing_the_json(quick):
    out, _, res = quick
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import image
    assert res["charts"]
    for c in res["charts"]:
        path = out / c["file"]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.imread(str(path)).shape[0] > 100  # decodes as a real picture
        if c["kind"] == "bar":
            fig = res["figures"][c["figure"]]
            want = {m: r["median"] for m, r in fig["modes"].items() if r["median"] is not None}
            assert c["plotted"] == pytest.approx(want), c["name"]
        else:
            key = c["figure"].split(".")[1]
            for m, pts in c["plotted"].items():
                steps = res["density"][m]["steps"]
                scale = 1024 if c["unit"] == "MiB" else 1
                want = [v for s in steps for v in (s["count"], s[key] / scale)]
                assert [v for pt in pts for v in pt] == pytest.approx(want)


# the same probe, two real outcomes: the host shares what the container does not
HOST_VS_CONTAINER = {
    "processes": ("shared", "isolated"),
    "mounts": ("shared", "isolated"),
    "procsys": ("shared", "blocked"),
    "clock": ("shared", "blocked"),
    "dmesg": ("shared", "blocked"),
    "cgroup-escape": ("shared", "blocked"),
    "forkbomb": ("not run", "blocked"),
    "memhog": ("not run", "blocked"),
    "kernel": ("shared", "shared"),
    "kernel-fault": ("shared", "shared"),
}


def test_probes_host_versus_container(quick):
    _, _, res = quick
    for name, (host, container) in HOST_VS_CONTAINER.items():
        modes = res["probes"][name]["modes"]
        assert modes["host"]["outcome"] == host, (name, modes["host"])
        assert modes["container"]["outcome"] == container, (name, modes["container"])
    # the host cannot open its disk here, nor load modules: whatever the outcome, both
    # modes report one with the evidence, and the container never gets further than it
    for name in ("module", "rawdisk"):
        for mode in ("host", "container"):
            r = res["probes"][name]["modes"][mode]
            assert r["outcome"] in ("shared", "blocked") and r["evidence"]
        assert res["probes"][name]["modes"]["container"]["outcome"] == "blocked"
    bomb = res["probes"]["forkbomb"]["modes"]["container"]
    assert "pids.max=32" in bomb["evidence"] and "sibling answered" in bomb["evidence"]
    hog = res["probes"]["memhog"]["modes"]["container"]
    assert "memory limit 48M" in hog["evidence"]


def test_compare_two_runs(quick, tmp_path):
    out, _, res = quick
    r = run_lab("--modes", "host", "--only", "cpu,getpid,kernel", "--repeat", "1",
                "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    r = run_lab("--compare", str(out / "results.json"), str(tmp_path / "b/results.json"))
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines()]
    cpu_host = next(x for x in rows if x[:1] == ["cpu"] and "host" in x)
    assert cpu_host[-1].endswith("x")
    assert any(x[:1] == ["cpu"] and "container" in x and "not run" in " ".join(x)
               for x in rows)
    assert lab_leftovers() == []


def test_list_and_schema():
    r = run_lab("--list")
    assert r.returncode == 0 and "memhog" in r.stdout and "fileio" in r.stdout
    r = run_lab("--schema")
    assert r.returncode == 0
    from ctrun.lab import schema
    assert json.loads(r.stdout) == schema.load()


@pytest.mark.parametrize("args, msg", [
    (("--modes", "host,bogus"), "unknown mode 'bogus'"),
    (("--only", "cpu,nope"), "unknown --only name 'nope'"),
    (("--repeat", "0"), "--repeat 0"),
    (("--compare", "/nonexistent/a.json", "/nonexistent/b.json"), "not found"),
    (("--modes", "container", "--image", "nosuch"), "image 'nosuch'"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, msg):
    out = tmp_path / "out"
    r = run_lab(*args, "--out", str(out))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctrun: error: ") and msg in lines[0], r.stderr
    assert not out.exists()
    assert lab_leftovers() == []


def test_compare_refuses_a_file_that_is_not_lab_results(tmp_path):
    (tmp_path / "x.json").write_text('{"schema": "something else"}')
    r = run_lab("--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json"))
    assert r.returncode == 2 and r.stderr.startswith("ctrun: error: ")
    assert "does not match the lab's schema" in r.stderr


def test_ctrl_c_cleans_up(tmp_path):
    out = tmp_path / "out"
    # a Ctrl-C reaches a lab run from a terminal; one this test runs from a background job
    # (`pytest &`: SIGINT ignored, and so inherited) is given the default disposition back
    p = subprocess.Popen([*LAB, "--quick", "--modes", "container", "--only", "density",
                          "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # wait until instances of the density run exist, then interrupt like Ctrl-C
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not list(
                Path("/sys/fs/cgroup").glob(f"*/ctrun-lab-{p.pid}/ct-d3.*")):  # <name>.<store id8>
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert not out.exists()
    assert lab_leftovers() == []


@pytest.mark.vm
def test_vm_run_names_its_accelerator(tmp_path):
    out = tmp_path / "vm"
    r = run_lab("--modes", "host,vm", "--repeat", "1", "--only",
                "cpu,memory,kernel,processes,clock,kernel-fault", "--out", str(out),
                timeout=900)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    from ctrun.lab import schema
    schema.validate(res)
    acc = res["accel"]
    assert acc in ("kvm", "tcg") and f"vm ({acc})" in res["title"]
    assert f"vm ({acc})" in (out / "report.md").read_text().splitlines()[0]
    for f in res["figures"].values():
        vm = f["modes"]["vm"]
        assert vm["accel"] == acc and vm["median"] is not None, f
    if acc == "tcg":
        assert any("TCG" in c for c in res["caveats"])
    p = res["probes"]
    assert p["kernel"]["modes"]["vm"]["outcome"] == "isolated"
    assert p["kernel"]["modes"]["host"]["outcome"] == "shared"
    assert p["processes"]["modes"]["vm"]["outcome"] == "isolated"
    assert p["clock"]["modes"]["vm"]["outcome"] == "isolated"
    assert p["clock"]["modes"]["host"]["outcome"] == "shared"
    assert p["kernel-fault"]["modes"]["vm"]["outcome"] == "isolated"
    assert lab_leftovers() == []


def test_a_mode_that_cannot_run_says_why(tmp_path):
    out = tmp_path / "novm"
    r = subprocess.run([*LAB, "--modes", "host,vm", "--only", "cpu,kernel", "--repeat", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env={**os.environ, "CTRUN_VM_KERNEL": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    from ctrun.lab import schema
    schema.validate(res)
    assert res["modes"]["vm"]["status"] == "unavailable"
    assert res["accel"] is None and "vm (not run)" in res["title"]
    cpu = res["figures"]["cpu"]["modes"]
    assert cpu["host"]["median"] > 0
    assert cpu["vm"]["median"] is None and "CTRUN_VM_KERNEL" in cpu["vm"]["unmeasured"]
    probe = res["probes"]["kernel"]["modes"]["vm"]
    assert probe["outcome"] == "not run" and "CTRUN_VM_KERNEL" in probe["evidence"]
    assert "n/a: vm mode unavailable here" in (out / "report.md").read_text()
    assert lab_leftovers() == []


def test_an_image_of_the_users_store_is_shared_into_the_lab(cli, store, tmp_path):
    """An image the lab cannot build offline comes from the store --root names: its layers
    are hard-linked into the lab's private store (the user's store is left as it was)."""
    cli("image", "build", "busybox", check=True)
    cli("image", "export", "busybox", str(tmp_path / "bb.tar"), check=True)
    cli("image", "import", str(tmp_path / "bb.tar"), "mine", check=True)
    before = sorted(p.name for p in (store / "layers" / "sha256").iterdir())
    out = tmp_path / "out"
    r = run_lab("--modes", "container", "--only", "kernel", "--image", "mine", "--out",
                str(out), root=store)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["options"]["image"] == "mine"
    assert sorted(p.name for p in (store / "layers" / "sha256").iterdir()) == before
    assert lab_leftovers() == []
