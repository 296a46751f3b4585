"""The lab's outputs: results.json (every sample), report.md, a self-contained report.html
(charts embedded as base64 PNG) and the short summary printed on the terminal."""

import html
import json

from . import charts


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 \
        else f"{v:.3g}"


def cell(r, spread=True):
    """median [min-max] (ratio to host), or why it is missing."""
    if r is None:
        return "not run"
    if r["median"] is None:
        return f"n/a: {r['unmeasured']}"
    s = fmt(r["median"])
    if spread and r["min"] != r["max"]:
        s += f" [{fmt(r['min'])}-{fmt(r['max'])}]"
    if r.get("ratio_to_host") is not None and r["ratio_to_host"] != 1:
        s += f" ({r['ratio_to_host']:.2f}x)"
    return s


def _head(res, m):
    acc = res["modes"].get(m, {}).get("accel")
    return f"{m} ({acc})" if acc else m


def figure_rows(res, spread=True, short=False):
    modes = res["options"]["modes"]
    rows = []
    for n, f in res["figures"].items():
        cells = [cell(f["modes"].get(m), spread) for m in modes]
        if short:
            cells = [c if not c.startswith("n/a") else "n/a" for c in cells]
        rows.append([f"{f['title']} ({f['unit']})" if not short else f"{n} ({f['unit']})",
                     *cells])
    return ["figure", *[_head(res, m) for m in modes]], rows


def density_rows(res):
    rows = []
    for m, d in res["density"].items():
        if d.get("unmeasured"):
            rows.append([_head(res, m), "-", "-", "-", "-", f"n/a: {d['unmeasured']}"])
            continue
        for i, s in enumerate(d["steps"]):
            last = i == len(d["steps"]) - 1
            rows.append([_head(res, m), str(s["count"]), fmt(s["per_instance_kb"] / 1024),
                         fmt(s["start_median_s"]), str(d["fit_in_1gib"]) if last else "",
                         d["cap"]["reason"] if d.get("cap") and last else ""])
    return ["mode", "count", "MiB per instance", "median start s", "fit in 1 GiB", "note"], rows


def memory_rows(res):
    """Where an idle instance's host memory goes (the first sample of each mode)."""
    mib = lambda kb: fmt(kb / 1024) if kb is not None else "not reported"  # noqa: E731
    rows = [[_head(res, m), mib(d[0]["pss_kb"]), mib(d[0]["kmem_kb"]),
             mib(d[0]["monitor_share_kb"]), mib(d[0]["total_kb"])]
            for m, d in res["memory_detail"].items() if d]
    return ["mode", "PSS of its processes", "kernel memory of its cgroup",
            "share of the monitor", "total (MiB)"], rows


def boot_rows(res):
    """Per mode: the booted servers' time, how each boot ended, where their idle memory
    goes (median of each part) and where the image came from."""
    mib = lambda kb: fmt(kb / 1024) if kb is not None else "not reported"  # noqa: E731
    med = lambda ms, k: (None if any(m[k] is None for m in ms)  # noqa: E731
                         else sorted(m[k] for m in ms)[len(ms) // 2])
    figs = res["figures"]
    rows = []
    for m in res["options"]["modes"]:
        b = figs.get("boot", {}).get("modes", {}).get(m)
        if b is None:
            continue
        d = res.get("boot_detail", {}).get(m, {})
        ms = d.get("memory") or []
        parts = [mib(med(ms, k)) for k in ("pss_kb", "kmem_kb", "monitor_share_kb")] \
            if ms else ["-"] * 3
        rows.append([_head(res, m), cell(b), ", ".join(d.get("states") or []) or "-", *parts,
                     cell(figs.get("boot_memory", {}).get("modes", {}).get(m)),
                     d.get("image_source", "-")])
    return ["mode", "time to booted (s)", "is-system-running", "PSS of its processes",
            "kernel memory of its cgroup", "share of the monitor", "total (MiB)",
            "image from"], rows


def probe_rows(res, evidence=True):
    modes = res["options"]["modes"]
    rows = []
    for n, p in res["probes"].items():
        cells = []
        for m in modes:
            r = p["modes"].get(m)
            if r is None:
                cells.append("not run")
            else:
                cells.append(f"**{r['outcome']}**: {r['evidence']}" if evidence
                             else r["outcome"])
        rows.append([p["title"], *cells])
    return ["probe", *[_head(res, m) for m in modes]], rows


def md_table(head, rows):
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [head] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def text_table(head, rows):
    cells = [head] + rows
    w = [max(len(str(r[i])) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(x) for c, x in zip(r, w)).rstrip()  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * x for x in w)] + [line(r) for r in rows])


def host_lines(res):
    h = res["host"]
    lay = h["cgroup_layout"]
    return [f"ctrun {h['ctrun_version']} ({h.get('ctrun_commit') or 'no git'}), kernel "
            f"{h['kernel']}, {h['cpus']} x {h['cpu_model']}, "
            f"{(h.get('memory_total_kb') or 0) >> 20} GiB",
            f"QEMU: {h['qemu_version']}; VM accelerator: {res['accel'] or 'not run'}"
            + (f" ({res['accel_note']})" if res.get("accel_note") else ""),
            f"cgroups: {lay['kind']} (v1: {', '.join(lay['v1_controllers']) or 'none'}; "
            f"v2: {lay['v2'] or 'none'})",
            f"options: {json.dumps(res['options'])}; wall time {res['wall_s']:.0f} s; "
            f"load {h['loadavg_start'][0]:.1f} -> {h['loadavg_end'][0]:.1f}"]


def markdown(res):
    out = [f"# {res['title']}", ""]
    out += [f"- {x}" for x in host_lines(res)]
    out += ["", "## Caveats", ""] + [f"- {c}" for c in res["caveats"]]
    out += ["", "## Figures (median [min-max] over the repeats; ratio to host)", "",
            md_table(*figure_rows(res))]
    if res["memory_detail"]:
        out += ["", "## Host memory of one idle instance (MiB)", "",
                md_table(*memory_rows(res))]
    if "boot" in res["figures"]:
        out += ["", "## Booted servers (debian-server, systemd as PID 1)", "",
                md_table(*boot_rows(res))]
    if res["density"]:
        out += ["", "## Density", "", md_table(*density_rows(res))]
    if res["probes"]:
        out += ["", "## Isolation probes", "",
                "isolated: its own copy (own kernel or namespace); shared: the host's own "
                "object; blocked: refused by the kernel, a capability, seccomp or a limit.",
                "", md_table(*probe_rows(res))]
    if res["charts"]:
        out += ["", "## Charts", ""] + [f"![{c['name']}]({c['file']})" for c in res["charts"]]
    if res["errors"]:
        out += ["", "## Errors", ""] + [f"- {e}" for e in res["errors"]]
    out += ["", "Every sample is in results.json."]
    return "\n".join(out) + "\n"


def _html_table(head, rows):
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c)).replace('**', '')}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def html_page(res, outdir):
    imgs = "".join(
        f'<figure><img alt="{html.escape(c["name"])}" src="data:image/png;base64,'
        f'{charts.png_base64(outdir / c["file"])}"></figure>' for c in res["charts"])
    parts = [f"<h1>{html.escape(res['title'])}</h1>",
             "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in host_lines(res)) + "</ul>",
             "<h2>Caveats</h2><ul>" + "".join(f"<li>{html.escape(c)}</li>"
                                              for c in res["caveats"]) + "</ul>",
             "<h2>Figures</h2><p>median [min-max] over the repeats; ratio to host</p>",
             _html_table(*figure_rows(res))]
    if res["memory_detail"]:
        parts += ["<h2>Host memory of one idle instance (MiB)</h2>",
                  _html_table(*memory_rows(res))]
    if "boot" in res["figures"]:
        parts += ["<h2>Booted servers (debian-server, systemd as PID 1)</h2>",
                  _html_table(*boot_rows(res))]
    if res["density"]:
        parts += ["<h2>Density</h2>", _html_table(*density_rows(res))]
    if res["probes"]:
        parts += ["<h2>Isolation probes</h2>", _html_table(*probe_rows(res))]
    parts += ["<h2>Charts</h2>", imgs]
    if res["errors"]:
        parts += ["<h2>Errors</h2><ul>" + "".join(f"<li>{html.escape(e)}</li>"
                                                  for e in res["errors"]) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
             "padding:3px 6px;vertical-align:top}figure{display:inline-block;margin:4px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(res['title'])}</title><style>{style}</style></head><body>"
            + "".join(parts) + "</body></html>\n")


def write(res, outdir):
    """Charts, then results.json, report.md and report.html in outdir."""
    res["charts"] = charts.draw_all(res, outdir)
    (outdir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (outdir / "report.md").write_text(markdown(res))
    (outdir / "report.html").write_text(html_page(res, outdir))


def summary(res):
    out = [res["title"], "", text_table(*figure_rows(res, spread=False, short=True))]
    if res["density"]:
        fit = [f"{_head(res, m)}: {d['fit_in_1gib']}" for m, d in res["density"].items()
               if d.get("fit_in_1gib")]
        if fit:
            out += ["", "idle instances per GiB: " + ", ".join(fit)]
    if res["probes"]:
        out += ["", text_table(*probe_rows(res, evidence=False))]
    if res["caveats"] and res["accel"] == "tcg":
        out += ["", "note: VM figures are under TCG (software emulation), not KVM"]
    return "\n".join(out)
