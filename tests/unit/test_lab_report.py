"""The lab's policy code without running anything: option checks, density caps, the
schema, the report and the charts (drawn values read back from the artists)."""

import json

import pytest

from ctrun.errors import InvalidInput
from ctrun.lab import charts, compare, density, lab, report, schema


def test_check_options():
    assert lab.check_options("host,container", None, 1) == (["host", "container"], None)
    assert lab.check_options(None, "cpu,kernel", None)[1] == {"cpu", "kernel"}
    for args, msg in ((("host,bogus", None, 1), "unknown mode 'bogus'"),
                      (("host", "cpu,nope", 1), "unknown --only name 'nope'"),
                      (("host", None, 0), "--repeat 0"),
                      ((",", None, 1), "unknown mode")):
        with pytest.raises(InvalidInput, match=msg):
            lab.check_options(*args)


def test_listing_names_every_workload_and_probe():
    text = lab.listing()
    for n in ("cpu", "fileio", "net", "density", "kernel", "memhog", "kernel-fault"):
        assert f"  {n} " in text


def test_density_plan_caps_by_the_smaller_budget():
    counts = [1, 10, 50]
    assert density.plan(counts, 10 << 10, 0.3, 4 << 20, 60) == (counts, None)
    kept, cap = density.plan(counts, 275 << 10, 6.3, 4 << 20, 15)
    assert kept == [1, 2] and cap["count"] == 2
    assert "time budget 15 s" in cap["reason"] and "memory budget" in cap["reason"]
    kept, cap = density.plan(counts, 300 << 10, 1.0, 1 << 20, 600)
    assert kept == [1, 3] and "allows 3" in cap["reason"]
    assert density.fit_in_1gib(256 << 10) == 4


def test_schema_is_valid_draft7():
    import jsonschema
    jsonschema.Draft7Validator.check_schema(schema.load())


def _fig(samples, accel=None, why=None):
    s = sorted(samples)
    return {"samples": samples, "median": s[len(s) // 2] if s else None,
            "min": s[0] if s else None, "max": s[-1] if s else None,
            "ratio_to_host": None, "accel": accel, "unmeasured": why}


def sample_results():
    host = {"ctrun_version": "0.1.0", "ctrun_commit": None, "kernel": "6.1", "cpus": 2,
            "cpu_model": "x", "qemu_version": "QEMU 7.2", "memory_total_kb": 1 << 24,
            "cgroup_layout": {"kind": "hybrid", "v1_controllers": ["memory"], "v2": None},
            "loadavg_start": [0.1, 0, 0], "loadavg_end": [0.2, 0, 0]}
    return {
        "schema": "ctrun-lab/1", "title": "t", "started_at": "a", "finished_at": "b",
        "wall_s": 1.0,
        "options": {"image": "busybox", "modes": ["host", "vm"], "repeat": 3, "quick": True,
                    "only": None, "seconds_per_loop": 0.3, "io_mb": 16, "settle_s": 1.0,
                    "vm_memory_mb": 256, "density_counts": [1, 10]},
        "host": host, "accel": "tcg", "accel_note": None, "caveats": [],
        "modes": {"host": {"status": "measured", "reason": None, "accel": None},
                  "vm": {"status": "measured", "reason": None, "accel": "tcg"}},
        "figures": {"cpu": {"title": "cpu", "unit": "ms/op", "better": "lower",
                            "workload": "cpu",
                            "modes": {"host": _fig([2.0, 2.2, 2.1]),
                                      "vm": _fig([3.0, 3.5, 3.1], "tcg")}},
                    "net_rr": {"title": "rr", "unit": "us", "better": "lower",
                               "workload": "net",
                               "modes": {"host": _fig([30.0]),
                                         "vm": _fig([], "tcg", "net failed: x")}}},
        "memory_detail": {}, "density": {
            "vm": {"accel": "tcg", "steps": [{"count": 1, "total_kb": 280000,
                                              "per_instance_kb": 280000, "start_s": [6.0],
                                              "start_median_s": 6.0}],
                   "cap": {"count": 1, "reason": "capped"}, "fit_in_1gib": 3,
                   "unmeasured": None}},
        "probes": {"kernel": {"title": "kernel version seen", "modes": {
            "host": {"outcome": "shared", "evidence": "same", "accel": None, "observed": {}},
            "vm": {"outcome": "isolated", "evidence": "own", "accel": "tcg",
                   "observed": {}}}}},
        "charts": [], "errors": []}


def test_report_charts_and_schema(tmp_path):
    res = sample_results()
    report.write(res, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    schema.validate(data)
    bars = {c["figure"]: c for c in data["charts"] if c["kind"] == "bar"}
    assert bars["cpu"]["plotted"] == {"host": 2.1, "vm": 3.1}
    assert bars["net_rr"]["plotted"] == {"host": 30.0}  # the unmeasured VM is not drawn
    for c in data["charts"]:
        assert (tmp_path / c["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "n/a: net failed: x" in md and "vm (tcg)" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(data["charts"])


def test_schema_rejects_a_silent_zero_and_a_vm_figure_without_accel():
    res = sample_results()
    res["figures"]["net_rr"]["modes"]["vm"]["unmeasured"] = None
    with pytest.raises(InvalidInput, match="net_rr"):
        schema.validate(res)
    res = sample_results()
    res["figures"]["cpu"]["modes"]["vm"]["accel"] = None
    with pytest.raises(InvalidInput, match="cpu"):
        schema.validate(res)


def test_compare_side_by_side(tmp_path):
    a, b = sample_results(), sample_results()
    b["figures"]["cpu"]["modes"]["host"] = _fig([4.2])
    b["probes"]["kernel"]["modes"]["vm"]["outcome"] = "shared"
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    text = compare.compare(tmp_path / "a.json", tmp_path / "b.json")
    row = next(ln for ln in text.splitlines() if ln.startswith("cpu") and " host " in ln)
    assert row.split()[-3:] == ["2.10", "4.20", "2.00x"]
    assert "changed" in text
    assert "vm (tcg)" in text


def test_charts_density_points_match(tmp_path):
    res = sample_results()
    rec = charts.density(res["density"], "per_instance_kb", "MiB", "t", tmp_path / "d.png")
    assert rec["plotted"]["vm"] == [[1.0, 280000 / 1024]]


class _FakeInst:
    def __init__(self, mode, name):
        self.name, self.mode = name, mode

    def start(self):
        self.mode.started += 1
        if self.mode.started > self.mode.fail_after:
            from ctrun.errors import CtrunError
            raise CtrunError("no room")

    def memory(self, share=None):
        return {"total_kb": 1000}

    def destroy(self):
        self.mode.destroyed += 1


class _FakeMode:
    name, accel = "container", None

    def __init__(self, fail_after):
        self.fail_after, self.started, self.destroyed = fail_after, 0, 0

    def create(self, name):
        return _FakeInst(self, name)

    def monitor_share_kb(self):
        return 0


class _FakeLab:
    settle_s = 0


def test_density_keeps_what_it_measured_when_a_start_fails():
    mode = _FakeMode(fail_after=12)
    d = density.run(_FakeLab(), mode, [1, 10, 50], None, lambda label: None)
    assert [s["count"] for s in d["steps"]] == [1, 10, 12]
    assert d["cap"]["count"] == 12 and "start 13 failed: no room" in d["cap"]["reason"]
    assert d["fit_in_1gib"] == (1 << 20) // 1000
    assert mode.destroyed == 13  # the 12 that ran and the one that failed


def test_density_stops_past_twice_its_time_budget():
    mode = _FakeMode(fail_after=10 ** 6)
    d = density.run(_FakeLab(), mode, [1, 10, 50], None, lambda label: None,
                    time_budget_s=1e-9)
    assert [s["count"] for s in d["steps"]] == [1]
    assert "longer than twice the time budget" in d["cap"]["reason"]
