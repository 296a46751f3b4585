"""The `ctrun lab` verb: options in, report out."""

import datetime
import json
import signal
import sys
from pathlib import Path

from ..errors import InvalidInput


def add_arguments(p):
    p.add_argument("--image", default="busybox", help="image every mode runs (default busybox)")
    p.add_argument("--modes", default="host,container,vm", metavar="MODE,...",
                   help="host, container, vm (default: all three)")
    p.add_argument("--repeat", type=int, metavar="N",
                   help="samples per figure (default 3, --quick 2)")
    p.add_argument("--quick", action="store_true",
                   help="short loops, density 1/10/50 (under 3 minutes with one TCG VM)")
    p.add_argument("--out", metavar="DIR",
                   help="report directory (default ./ctrun-lab-DATE-TIME)")
    p.add_argument("--only", metavar="NAME,...", help="only these workloads and probes")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                   help="VM accelerator (auto: KVM where it is proven to boot, else TCG)")
    p.add_argument("--list", action="store_true", help="name the workloads and probes")
    p.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of results.json")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="two results.json side by side")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM/SIGHUP clean up like Ctrl-C


def run(a):
    if a.schema:
        from . import schema
        print(json.dumps(schema.load(), indent=1))
        return 0
    if a.list:
        from .lab import listing
        print(listing())
        return 0
    if a.compare:
        from .compare import compare
        print(compare(*a.compare))
        return 0
    from .lab import Lab
    from .progress import Progress
    from . import report
    lab = Lab(image=a.image, modes=a.modes, repeat=a.repeat, quick=a.quick, only=a.only,
              accel=a.accel, source_root=a.root)
    out = Path(a.out or f"ctrun-lab-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"output directory {out} is not empty; give another --out")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _terminate)
    progress = Progress(lab.plan_steps())
    made = not out.exists()
    try:
        lab.setup()
        res = lab.run(progress)
        out.mkdir(parents=True, exist_ok=True)
        progress.show("writing the report")
        report.write(res, out)
        progress.close()
    except BaseException:
        progress.close()
        if made and out.exists():
            import shutil
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lab.cleanup()
    print(report.summary(res))
    print(f"\nreport: {out}/report.md, {out}/report.html, {out}/results.json "
          f"({res['wall_s']:.0f} s)")
    if lab.errors:
        print(f"ctrun: warning: {len(lab.errors)} problem(s), listed in the report",
              file=sys.stderr)
    return 0
