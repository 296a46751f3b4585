"""The booted-server figure's bookkeeping, with a recording fake of the instance: which
boots are timed, what a failed boot records, host mode's "not applicable", --quick, and the
report and schema of the result."""

import json

import pytest

from ctrun.errors import CtrunError
from ctrun.lab import lab, report, schema, workloads as wl
from ctrun.lab.progress import Progress
from test_lab_report import sample_results


class _Server:
    def __init__(self, mode, name, image):
        self.mode, self.name, self.image = mode, name, image

    def boot(self, deadline):
        self.mode.calls.append(("boot", self.name, self.image))
        return self.mode.states.pop(0)

    def memory(self, share=None):
        self.mode.calls.append(("memory", self.name))
        return {"pss_kb": 30000, "kmem_kb": 4000, "monitor_share_kb": 10000,
                "total_kb": 44000}

    def stop(self, timeout=10):
        self.mode.calls.append(("stop", self.name))

    def destroy(self):
        self.mode.calls.append(("destroy", self.name))


class _Mode:
    accel = None

    def __init__(self, name, states):
        self.name, self.states, self.calls = name, list(states), []

    def create(self, name, image=None):
        self.calls.append(("create", name))
        return _Server(self, name, image)


def _lab(monkeypatch, repeat=2, quick=False, only="boot", modes="host,container"):
    lb = lab.Lab(modes=modes, repeat=repeat, quick=quick, only=only)
    lb.settle_s = 0
    monkeypatch.setattr(lb, "_server_image", lambda progress: "the user's store")
    res = {"figures": {f: {"modes": {}} for f in wl.WORKLOADS["boot"][1]}, "boot_detail": {}}
    return lb, res


def test_each_server_is_booted_measured_stopped_and_destroyed(monkeypatch):
    lb, res = _lab(monkeypatch)
    mode = _Mode("container", ["running", "degraded"])
    lb._boot("container", mode, res, Progress(10))
    assert mode.calls == [("create", "srv0"), ("boot", "srv0", "debian-server"),
                          ("memory", "srv0"), ("stop", "srv0"), ("destroy", "srv0"),
                          ("create", "srv1"), ("boot", "srv1", "debian-server"),
                          ("memory", "srv1"), ("stop", "srv1"), ("destroy", "srv1")]
    boot = res["figures"]["boot"]["modes"]["container"]
    assert len(boot["samples"]) == 2 and boot["unmeasured"] is None
    assert res["figures"]["boot_memory"]["modes"]["container"]["samples"] == [44000 / 1024] * 2
    assert res["boot_detail"]["container"]["states"] == ["running", "degraded"]
    assert res["boot_detail"]["container"]["image_source"] == "the user's store"
    assert not lb.errors


def test_a_boot_that_does_not_finish_is_recorded_with_why(monkeypatch):
    lb, res = _lab(monkeypatch)
    mode = _Mode("vm", ["running", "starting"])
    lb._boot("vm", mode, res, Progress(10))
    # the second server never booted: destroyed, not measured, and the reason kept
    assert ("memory", "srv1") not in mode.calls and ("destroy", "srv1") in mode.calls
    boot = res["figures"]["boot"]["modes"]["vm"]
    assert len(boot["samples"]) == 1
    assert "is-system-running: starting" in lb.errors[0]


def test_no_server_image_leaves_the_figure_unmeasured_with_the_reason(monkeypatch):
    lb, res = _lab(monkeypatch)

    def no_image(progress):
        raise CtrunError("cannot reach the Debian archive")
    monkeypatch.setattr(lb, "_server_image", no_image)
    mode = _Mode("container", [])
    lb._boot("container", mode, res, Progress(10))
    for fig in ("boot", "boot_memory"):
        r = res["figures"][fig]["modes"]["container"]
        assert r["median"] is None and "Debian archive" in r["unmeasured"]
    assert mode.calls == []


def test_host_mode_is_not_applicable(monkeypatch):
    lb, res = _lab(monkeypatch)
    lb._boot("host", _Mode("host", []), res, Progress(10))
    r = res["figures"]["boot"]["modes"]["host"]
    assert r["median"] is None and r["unmeasured"].startswith("not applicable")


def test_quick_leaves_boot_out_unless_named():
    assert not lab.Lab(quick=True).selected("boot")
    assert lab.Lab(quick=True).selected("cpu")
    assert lab.Lab(quick=True, only="boot").selected("boot")
    assert lab.Lab().selected("boot")
    assert "boot" in lab.listing()
    with_boot = lab.Lab(modes="host,container", repeat=2, only="boot").plan_steps()
    assert with_boot == lab.Lab(modes="host,container", repeat=2, only="cpu").plan_steps() + 2


def test_report_and_schema_of_a_booted_server(tmp_path):
    res = sample_results()
    res["figures"]["boot"] = {"title": "time to a booted server", "unit": "s",
                              "better": "lower", "workload": "boot", "modes": {
                                  "host": {"samples": [], "median": None, "min": None,
                                           "max": None, "ratio_to_host": None, "accel": None,
                                           "unmeasured": "not applicable: no server"},
                                  "vm": {"samples": [14.2], "median": 14.2, "min": 14.2,
                                         "max": 14.2, "ratio_to_host": None, "accel": "tcg",
                                         "unmeasured": None}}}
    res["boot_detail"] = {"vm": {"image": "debian-server", "image_source": "built here",
                                 "states": ["running"],
                                 "memory": [{"pss_kb": 200000, "kmem_kb": 2048,
                                             "monitor_share_kb": 0, "total_kb": 202048}]}}
    report.write(res, tmp_path)
    schema.validate(json.loads((tmp_path / "results.json").read_text()))
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Booted servers", 1)[1].split("##", 1)[0]
    assert "| vm (tcg) | 14.2 | running | 195 | 2.00 | 0 | not run | built here |" in section
    assert "| host | n/a: not applicable: no server | - |" in section
    assert "Booted servers" in (tmp_path / "report.html").read_text()
    res["boot_detail"]["vm"]["states"] = "running"
    with pytest.raises(Exception, match="boot_detail"):
        schema.validate(res)
