"""Charts as PNG files (matplotlib, Agg backend, imported only here).

Each chart's record keeps the values read back from the drawn artists (bar heights, line
points), so a test can check that the picture shows exactly what results.json holds."""

import io


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label(mode, accel):
    return f"{mode} ({accel})" if accel else mode


def bar(fig_name, fig, path):
    """Medians per mode with min..max whiskers; an unmeasured mode is named, not drawn."""
    plt = _plt()
    modes = list(fig["modes"])
    f, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
    plotted, labels, heights, errs, xs = {}, [], [], [[], []], []
    for i, m in enumerate(modes):
        r = fig["modes"][m]
        labels.append(_label(m, r.get("accel")))
        if r["median"] is None:
            ax.text(i, 0, "not measured", ha="center", va="bottom", fontsize=8, rotation=90)
            continue
        xs.append(i)
        heights.append(r["median"])
        errs[0].append(r["median"] - r["min"])
        errs[1].append(r["max"] - r["median"])
    bars = ax.bar(xs, heights, yerr=errs, capsize=4, color="#4c72b0")
    for i, b in zip(xs, bars):
        plotted[modes[i]] = float(b.get_height())
    ax.set_xticks(range(len(modes)))
    ax.set_xticklabels(labels)
    ax.set_ylabel(fig["unit"])
    ax.set_title(f"{fig['title']} ({fig['better']} is better)", fontsize=9)
    f.tight_layout()
    f.savefig(path, format="png")
    plt.close(f)
    return {"name": fig_name, "file": f"charts/{path.name}", "format": "png", "kind": "bar",
            "figure": fig_name, "unit": fig["unit"], "plotted": plotted}


def density(dens, key, unit, title, path):
    """One line per mode: `key` of each density step against the instance count."""
    plt = _plt()
    f, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
    plotted = {}
    for m, d in dens.items():
        pts = [(s["count"], s[key] / (1024 if unit == "MiB" else 1)) for s in d["steps"]
               if s.get(key) is not None]
        if not pts:
            continue
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                          label=_label(m, d.get("accel")))
        plotted[m] = [[float(x), float(y)] for x, y in zip(*line.get_data())]
    ax.set_xscale("log")
    ax.set_yscale("log")  # a VM and a container differ by two orders of magnitude
    ax.set_xlabel("idle instances")
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=9)
    if plotted:
        ax.legend(fontsize=8)
    f.tight_layout()
    f.savefig(path, format="png")
    plt.close(f)
    return {"name": path.stem, "file": f"charts/{path.name}", "format": "png", "kind": "line",
            "figure": f"density.{key}", "unit": unit, "plotted": plotted}


def draw_all(res, outdir):
    """Write every chart under outdir/charts; returns their records."""
    d = outdir / "charts"
    d.mkdir(exist_ok=True)
    out = [bar(n, f, d / f"{n}.png") for n, f in res["figures"].items()]
    if any(x["steps"] for x in res["density"].values()):
        out.append(density(res["density"], "per_instance_kb", "MiB",
                           "host memory per idle instance vs count", d / "density_memory.png"))
        out.append(density(res["density"], "start_median_s", "s",
                           "median start time per instance vs count", d / "density_start.png"))
    return out


def png_base64(path):
    import base64
    return base64.b64encode(io.open(path, "rb").read()).decode()
