"""`ctrun lab --compare A/results.json B/results.json`: two runs side by side."""

import json

from ..errors import InvalidInput, NotFound
from . import report


def load(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"{path} not found; give the results.json of a lab run") from None
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path} is not a lab results file: {e}") from None
    from .schema import validate
    validate(data, str(path))
    return data


def compare(a_path, b_path):
    a, b = load(a_path), load(b_path)
    out = [f"A: {a_path}: {a['title']} ({a['started_at']})",
           f"B: {b_path}: {b['title']} ({b['started_at']})", ""]
    for label, key in (("kernel", "kernel"), ("CPU", "cpu_model"), ("QEMU", "qemu_version"),
                       ("ctrun", "ctrun_version")):
        if a["host"].get(key) != b["host"].get(key):
            out.append(f"{label} differs: A {a['host'].get(key)}, B {b['host'].get(key)}")
    if a["accel"] != b["accel"]:
        out.append(f"VM accelerator differs: A {a['accel']}, B {b['accel']}")
    rows = []
    for n in dict.fromkeys(list(a["figures"]) + list(b["figures"])):
        fa, fb = a["figures"].get(n), b["figures"].get(n)
        unit = (fa or fb)["unit"]
        for m in dict.fromkeys(list((fa or {}).get("modes", {})) +
                               list((fb or {}).get("modes", {}))):
            ra = (fa or {}).get("modes", {}).get(m)
            rb = (fb or {}).get("modes", {}).get(m)
            va = ra["median"] if ra else None
            vb = rb["median"] if rb else None
            acc = {r.get("accel") for r in (ra, rb) if r and r.get("accel")}
            rows.append([n, unit, m + (f" ({'/'.join(sorted(acc))})" if acc else ""),
                         report.fmt(va) if ra else "not run",
                         report.fmt(vb) if rb else "not run",
                         f"{vb / va:.2f}x" if va and vb is not None else "-"])
    out += ["", report.text_table(["figure", "unit", "mode", "A", "B", "B/A"], rows)]
    prow = []
    for n in dict.fromkeys(list(a["probes"]) + list(b["probes"])):
        for m in dict.fromkeys(list(a["probes"].get(n, {}).get("modes", {})) +
                               list(b["probes"].get(n, {}).get("modes", {}))):
            oa = a["probes"].get(n, {}).get("modes", {}).get(m, {}).get("outcome", "not run")
            ob = b["probes"].get(n, {}).get("modes", {}).get(m, {}).get("outcome", "not run")
            prow.append([n, m, oa, ob, "" if oa == ob else "changed"])
    if prow:
        out += ["", report.text_table(["probe", "mode", "A", "B", ""], prow)]
    return "\n".join(out)
