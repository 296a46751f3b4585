#!/usr/bin/python3
"""Image import: wall time of `ctrun image import LAYOUT NAME` vs `umoci unpack` of the same
OCI image layout, and the bytes a second image sharing those layers adds to the store.

The layout is generated here, deterministically (seeded), with no network: 5 gzip layers,
~100 MiB of file content in all (random bytes and low-entropy text, so it neither
compresses to nothing nor skips gzip's work), a few thousand files of varied sizes in
nested directories, symlinks, a hardlink, a file replaced by a later layer, a whiteout and
an opaque directory.  Before timing, one ctrun import and one umoci unpack are compared
file by file (type, mode, owner, size, link target, content hash, link count).
Timed interleaved, --runs after --warmup discarded rounds; between runs, untimed, the image
is removed (`ctrun image rm`), the umoci bundle deleted and the file systems synced, so no
run pays for another's writeback.  Target: ctrun median <= 1.2x umoci's.
Then the layout is imported, and a second image made from it (the same 5 layers plus a small
sixth one, another Cmd) imported next to it; the store's disk usage (hard links counted once)
is compared after one and after two images.  Target: the second image adds no duplicate
bytes (<= 1% of the first image's usage: its own small layer and metadata).
ctrun's image is compared file by file with umoci's rootfs through its merged view: its
layers stacked read-only by overlayfs in a private mount namespace of a child process.
Run as root:  benchmarks/bench_import.py [--runs 5] [--warmup 1] [--size-mb 100]
"""

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_RATIO = 1.2
SHARE_TOLERANCE = 0.01   # of the first image's usage: image.json, directories, nothing more
LAYERS = 5
TAG = "bench"
MTIME = 1_700_000_000
MIB = 1 << 20
# low-entropy text: 16 symbols, ~4 bits a byte, so gzip halves it and has real work to do
TEXT = bytes.maketrans(bytes(range(256)), bytes(b"etaoinshrdlu \n.,"[i % 16]
                                                for i in range(256)))


# ------------------------------------------------------------------ the generated image
class _Hashing:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, out):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        return self.out.write(b) if self.out is not None else len(b)

    def flush(self):
        pass


class _Layer:
    """One layer tar being written: members added in order, parent dirs declared once."""

    def __init__(self, tf, rng):
        self.tf, self.rng, self.dirs = tf, rng, set()
        self.stats = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "whiteouts": 0,
                      "bytes": 0}

    def _info(self, name, kind, mode):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, MTIME
        ti.uname = ti.gname = "root"
        return ti

    def dir(self, path, mode=0o755):
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.dirs:
                self.dirs.add(p)
                self.tf.addfile(self._info(p, tarfile.DIRTYPE, mode if i == len(parts)
                                           else 0o755))
                self.stats["dirs"] += 1

    def file(self, path, data, mode=0o644):
        self.dir(path.rpartition("/")[0])
        ti = self._info(path, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tf.addfile(ti, io.BytesIO(data))
        self.stats["files"] += 1
        self.stats["bytes"] += len(data)

    def symlink(self, path, target):
        self.dir(path.rpartition("/")[0])
        ti = self._info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tf.addfile(ti)
        self.stats["symlinks"] += 1

    def hardlink(self, path, target):
        self.dir(path.rpartition("/")[0])
        ti = self._info(path, tarfile.LNKTYPE, 0o755)
        ti.linkname = target
        self.tf.addfile(ti)
        self.stats["hardlinks"] += 1

    def whiteout(self, path):
        d, _, leaf = path.rpartition("/")
        self.dir(d)
        self.tf.addfile(self._info(f"{d}/.wh.{leaf}", tarfile.REGTYPE, 0o644))
        self.stats["whiteouts"] += 1

    def data(self, n):
        raw = self.rng.randbytes(n)
        return raw if self.rng.random() < 0.6 else raw.translate(TEXT)

    def fill(self, budget, dirs, prefix):
        """Files of log-normal sizes (median ~5 KiB, mean ~25 KiB, a few MiB at most) spread
        over dirs until `budget` bytes are written."""
        i = 0
        while budget > 0:
            n = min(budget, int(self.rng.lognormvariate(8.5, 1.8)), 6 * MIB)
            if self.rng.random() < 0.02:
                n = 0
            d = self.rng.choice(dirs)
            mode = 0o755 if self.rng.random() < 0.2 else 0o644
            suffix = ".txt" if mode == 0o644 else ""
            self.file(f"{d}/{prefix}{i:05d}{suffix}", self.data(n), mode)
            budget -= n
            i += 1


def _layer_content(idx, lay, budget):
    rng = lay.rng
    # every layer: a few packages, each a small tree, plus files in shared directories
    dirs = ["usr/bin", "usr/lib", "etc"]
    for k in range(4):
        base = rng.choice(["usr/lib", "usr/share/doc", "opt", "var/lib"]) + f"/pkg{idx}_{k}"
        dirs.append(base)
        for s in range(rng.randint(1, 4)):
            sub = f"{base}/sub{s}" + (f"/deep{s}" if rng.random() < 0.4 else "")
            dirs.append(sub)
    if idx == 0:
        for d, mode in (("bin", 0o755), ("root", 0o700), ("tmp", 0o1777), ("var/log", 0o755)):
            lay.dir(d, mode)
        lay.file("bin/busybox", lay.rng.randbytes(900_000), 0o755)
        lay.hardlink("usr/bin/busybox-hardlink", "bin/busybox")
        lay.symlink("lib", "usr/lib")                        # a relative directory link
        lay.symlink("usr/bin/sh", "/bin/busybox")            # an absolute one
        lay.file("etc/hostname", b"bench\n")
        lay.file("etc/old.conf", b"removed by a whiteout in layer 4\n")
        budget -= 900_000
    if idx == 1:
        lay.file("usr/lib/libbench.so.1", rng.randbytes(300_000), 0o755)
        lay.symlink("usr/lib/libbench.so", "libbench.so.1")
        lay.file("usr/share/doc/bench/README", b"replaced by layer 3\n")
        lay.file("usr/share/doc/bench/obsolete", b"hidden by an opaque dir in layer 5\n")
        budget -= 300_000
    if idx == 2:
        lay.file("usr/share/doc/bench/README", b"layer 3 replaced this file\n")
    if idx == 3:
        lay.whiteout("etc/old.conf")
    if idx == 4:
        lay.dir("usr/share/doc/bench")
        lay.tf.addfile(lay._info("usr/share/doc/bench/.wh..wh..opq", tarfile.REGTYPE, 0o644))
        lay.stats["whiteouts"] += 1
        lay.file("usr/share/doc/bench/NEW", b"the only file left in this directory\n")
    lay.fill(budget, dirs, f"l{idx}-")  # unique names: layers add files, never replace


def make_layout(path, size_mb, seed):
    """Write the OCI image layout; returns a description of what is in it."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers, diff_ids, stats = [], [], []
    for idx in range(LAYERS):
        tmp = blobs / f".layer{idx}"
        with open(tmp, "wb") as out:
            packed = _Hashing(out)
            with gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=6, mtime=0) as gz:
                unpacked = _Hashing(gz)
                with tarfile.open(fileobj=unpacked, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    lay = _Layer(tf, random.Random(f"{seed}:{idx}"))
                    _layer_content(idx, lay, size_mb * MIB // LAYERS)
        tmp.rename(blobs / packed.sha.hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": f"sha256:{packed.sha.hexdigest()}", "size": packed.size})
        diff_ids.append(f"sha256:{unpacked.sha.hexdigest()}")
        stats.append({**lay.stats, "tar_bytes": unpacked.size, "gzip_bytes": packed.size})
    config = {"created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/bin:/bin", "BENCH=1"], "Cmd": ["/bin/busybox", "sh"],
                         "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"bench layer {i}"}
                          for i in range(LAYERS)]}
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json",
             **put(json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cdesc, "layers": layers}
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **put(json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": TAG}}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return {"layers": stats,
            "files": sum(s["files"] for s in stats), "dirs": sum(s["dirs"] for s in stats),
            "content_bytes": sum(s["bytes"] for s in stats),
            "tar_bytes": sum(s["tar_bytes"] for s in stats),
            "gzip_bytes": sum(s["gzip_bytes"] for s in stats)}


def derive_layout(src, dst):
    """A second image in its own layout: src's layers (hard links of the same blobs) plus a
    small sixth layer and another Cmd."""
    shutil.copytree(src, dst, copy_function=os.link)
    blobs = dst / "blobs" / "sha256"
    index = json.loads((dst / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _Layer(tf, random.Random(0)).file("etc/second-image", b"only in the second image\n")
    tar = buf.getvalue()
    packed = gzip.compress(tar, mtime=0)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(tar).hexdigest())
    config["config"]["Cmd"] = ["/bin/busybox", "cat", "/etc/second-image"]
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               **put(packed)})
    manifest["config"].update(put(json.dumps(config).encode()))
    index["manifests"][0].update(put(json.dumps(manifest).encode()))
    (dst / "index.json").unlink()      # a hard link of src's: write a new file
    (dst / "index.json").write_text(json.dumps(index))


# ------------------------------------------------------------------ trees and disk usage
def tree(root):
    """{relative path: (type, mode, uid, gid, size, link target or sha256, nlink)}."""
    out = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                what, extra = "symlink", os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                what, extra = "dir", None
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(MIB):
                        h.update(chunk)
                what, extra = "file", h.hexdigest()
            else:
                what, extra = "other", None
            out[rel] = (what, stat.S_IMODE(st.st_mode) if what != "symlink" else None,
                        st.st_uid, st.st_gid, st.st_size if what == "file" else None, extra,
                        st.st_nlink if what == "file" else None)
    return out


def merged_tree(layer_dirs, scratch):
    """tree() of the merged view of layer directories (top first), as containers see it:
    ctrun's layers.merged mounts it in a child's own mount namespace, so no mount is ever
    visible outside."""
    from ctrun.images import layers
    out = scratch / "merged-tree.json"
    layers.merged(layer_dirs, lambda m: out.write_text(json.dumps(tree(m))), scratch)
    return {k: tuple(v) for k, v in json.loads(out.read_text()).items()}


def compare_trees(a, b):
    """Differences between two tree() results, as short lines (at most 10)."""
    fields = ("type", "mode", "uid", "gid", "size", "target/sha256", "nlink")
    diffs = [f"only in ctrun's: {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"only in umoci's: {p}" for p in sorted(b.keys() - a.keys())]
    for p in sorted(a.keys() & b.keys()):
        for f, x, y in zip(fields, a[p], b[p]):
            if x != y:
                x, y = (oct(x), oct(y)) if f == "mode" and None not in (x, y) else (x, y)
                diffs.append(f"{p}: {f} {x} (ctrun) vs {y} (umoci)")
    return diffs


def disk_usage(root):
    """(allocated bytes, apparent bytes, inodes) under root, each inode counted once."""
    seen, alloc, apparent = set(), 0, 0
    if not os.path.exists(root):
        return 0, 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [None] + dirnames + filenames:
            p = dirpath if n is None else os.path.join(dirpath, n)
            st = os.lstat(p)
            if (n is not None and stat.S_ISDIR(st.st_mode)) or (st.st_dev, st.st_ino) in seen:
                continue  # a directory is counted when walked into
            seen.add((st.st_dev, st.st_ino))
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent, len(seen)


# ------------------------------------------------------------------ timing
def fmt_mb(n):
    return f"{n / MIB:.1f} MiB"


def measure_sharing(ws, layout):
    """The store's usage (allocated, apparent, inodes) empty, with the image, with a second
    one sharing its layers, and after both are removed; and the same for <store>/images."""
    images = ws.store / "images"
    # sharing: a second image made of the same 5 layers and a small sixth one
    print("bench_import: importing the image and a second one sharing its layers, for "
          "the store's usage", flush=True)
    derive_layout(layout, ws.tmp / "layout2")
    usage = {"empty": disk_usage(ws.store)}
    images_usage = {"empty": disk_usage(images)}
    for step, nm, src in (("one image", "shared-a", layout),
                          ("two images", "shared-b", ws.tmp / "layout2")):
        ws.ctrun_check("image", "import", str(src), nm, timeout=600)
        os.sync()
        usage[step] = disk_usage(ws.store)
        images_usage[step] = disk_usage(images)
    for nm in ("shared-a", "shared-b"):
        ok, msg = common.probe(ws.ctrun_cmd("image", "rm", nm))
        if not ok:
            ws.leaks.append(f"`ctrun image rm {nm}` failed: {msg}")
    usage["after rm"] = disk_usage(ws.store)
    residue = usage["after rm"][0] - usage["empty"][0]
    if residue > 64 * 1024:
        ws.leaks.append(f"the store holds {residue} bytes more after `ctrun image rm` of "
                        "both images than before they were imported")
    return usage, images_usage


def report_sharing(usage, images_usage):
    """What the second image added to the store, against the target; returns it for the
    JSON."""
    one = usage["one image"][0] - usage["empty"][0]
    extra = usage["two images"][0] - usage["one image"][0]
    share = extra / one if one else float("nan")
    print()
    print(common.table(
        ["store", "allocated", "apparent", "inodes"],
        [[k, fmt_mb(v[0]), fmt_mb(v[1]), v[2]] for k, v in usage.items()]))
    print(f"\nsecond image sharing the layers adds {extra} bytes ({fmt_mb(extra)}), "
          f"{share * 100:.1f}% of the first image's {fmt_mb(one)}   target: no duplicate "
          f"bytes (<= {SHARE_TOLERANCE * 100:.0f}%)   "
          f"{common.verdict(share <= SHARE_TOLERANCE)}")
    img_extra = images_usage["two images"][0] - images_usage["one image"][0]
    print(f"  (<store>/images alone: +{fmt_mb(img_extra)} for the second image, the rest "
          "is its own sixth layer under <store>/layers; allocated blocks, each inode "
          "counted once)")
    fields = ("allocated", "apparent", "inodes")
    return {"store_usage": {k: dict(zip(fields, v)) for k, v in usage.items()},
            "images_usage": {k: dict(zip(fields, v)) for k, v in images_usage.items()},
            "first_image_bytes": one, "second_image_extra_bytes": extra,
            "extra_fraction": share, "tolerance_fraction": SHARE_TOLERANCE,
            "met": share <= SHARE_TOLERANCE}


def measure(b):
    a = b.args
    peers = b.peers
    peers.need("umoci", "umoci")  # the merged view is ctrun's own layers.merged
    with common.Workspace("import") as ws:
        layout = ws.tmp / "layout"
        bundle = ws.tmp / "bundle"
        name = "bench-import"
        images = ws.store / "images"

        print(f"bench_import: generating a {a.size_mb} MiB, {LAYERS}-layer OCI image layout "
              "(seeded, no network)", flush=True)
        t0 = time.perf_counter()
        desc = make_layout(layout, a.size_mb, a.seed)
        print(f"  {desc['files']} files, {desc['dirs']} directory entries, "
              f"{fmt_mb(desc['content_bytes'])} of content, layers {fmt_mb(desc['tar_bytes'])} "
              f"as tar, {fmt_mb(desc['gzip_bytes'])} gzipped ({time.perf_counter() - t0:.1f} s)",
              flush=True)

        def reset():
            ok, msg = common.probe(ws.ctrun_cmd("image", "rm", name))
            if not ok:
                ws.leaks.append(f"`ctrun image rm {name}` failed: {msg}")
            if (images / name).exists():
                ws.leaks.append(f"`ctrun image rm {name}` left {images / name}")
                shutil.rmtree(images / name, ignore_errors=True)
            shutil.rmtree(bundle, ignore_errors=True)
            for d in (images, ws.store / "layers"):
                left = [n for n in os.listdir(d) if n.startswith(".")] if d.is_dir() else []
                for n in left:   # a failed or killed import's temp dirs
                    ws.leaks.append(f"ctrun left {d / n} in the store")
                    shutil.rmtree(d / n, ignore_errors=True)
            kept = os.listdir(ws.store / "layers" / "sha256") \
                if (ws.store / "layers" / "sha256").is_dir() else []
            if kept:         # the next import must extract every layer again
                ws.leaks.append(f"`ctrun image rm {name}` left {len(kept)} layers")
                for n in kept:
                    shutil.rmtree(ws.store / "layers" / "sha256" / n, ignore_errors=True)
            os.sync()        # the next run must not pay for this one's writeback
        ws.on_cleanup(shutil.rmtree, bundle, True)

        arms = {"ctrun image import": ws.ctrun_cmd("image", "import", str(layout), name)}
        umoci = ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)]

        # one of each, checked: both must produce the same tree, with ctrun's config kept
        print("bench_import: checking one import against one umoci unpack", flush=True)
        ok, msg = common.probe(arms["ctrun image import"], timeout=600)
        if not ok:
            raise RuntimeError(f"ctrun image import failed: {msg}")
        if peers.probe("umoci", umoci, timeout=600):
            arms["umoci unpack"] = umoci
        inspect = json.loads(ws.ctrun_check("image", "inspect", name))
        diffs = compare_trees(merged_tree(inspect["layer_dirs"], ws.tmp),
                              tree(bundle / "rootfs")) if peers.ok("umoci") else []
        if diffs:
            ws.leaks.append(f"ctrun's rootfs differs from umoci's in {len(diffs)} ways, e.g. "
                            + "; ".join(diffs[:3]))
        cmd = inspect.get("cmd")
        if cmd != ["/bin/busybox", "sh"]:
            ws.leaks.append(f"ctrun kept cmd {cmd!r}, the image's Cmd is ['/bin/busybox', 'sh']")
        reset()

        print(f"bench_import: timing {a.runs} runs (+{a.warmup} warm-up) of each, interleaved",
              flush=True)

        def after_round(rnd, this):
            reset()
            print(f"  round {rnd + 1}/{a.warmup + a.runs}"
                  f"{' (warm-up)' if rnd < a.warmup else ''}: "
                  + ", ".join(f"{n} {this[n]:.2f} s" if this[n] is not None else
                              f"{n} FAILED" for n in arms), flush=True)
        samples, failed, _ = common.rounds({n: common.command(argv) for n, argv in arms.items()},
                                           a.runs, a.warmup, after_round=after_round)
        for label, n in failed.items():
            if n:
                ok, msg = common.probe(arms[label], timeout=600)
                ws.leaks.append(f"{n} timed run(s) of {label} failed; run again: "
                                f"{'ok' if ok else msg}")
                reset()

        usage, images_usage = measure_sharing(ws, layout)
        ws.check_clean("after removing every image")

        # ---------------------------------------------------------------- report
        stats = {}
        rows = []
        for label in arms:
            if not samples[label]:
                raise RuntimeError(f"every run of `{' '.join(arms[label])}` failed")
            s = common.summary_ms(samples[label])
            stats[label] = {**s, "failed": failed[label]}
            rows.append([label, f"{s['median_ms'] / 1000:.2f}", f"{s['p10_ms'] / 1000:.2f}",
                         f"{s['p90_ms'] / 1000:.2f}", failed[label]])
        print()
        print(common.table(["command", "median s", "p10 s", "p90 s", "failed"], rows))
        mbps = desc["tar_bytes"] / MIB / (stats["ctrun image import"]["median_ms"] / 1000)
        ratio = None
        if "umoci unpack" in stats:
            ratio = stats["ctrun image import"]["median_ms"] / stats["umoci unpack"]["median_ms"]
            print()
            common.print_ratio("ctrun / umoci (medians)", ratio, TARGET_RATIO, of="umoci")
        else:
            print(f"\nctrun / umoci: not measured: {peers.unavailable['umoci']}")
        print(f"  (ctrun applies {mbps:.0f} MiB/s of layer tar; umoci also writes an mtree "
              "manifest of the rootfs and a runtime config.json)")

        sharing = report_sharing(usage, images_usage)

        result = {"params": {"runs": a.runs, "warmup": a.warmup, "size_mb": a.size_mb,
                             "seed": a.seed, "layers": LAYERS},
                  "image": desc, "umoci_version": common.tool_version(["umoci", "--version"]),
                  "target_ratio": TARGET_RATIO, "stats": stats, "ratio_ctrun_over_umoci": ratio,
                  "peers_unavailable": peers.unavailable,
                  "samples_ms": common.samples_ms(samples),
                  "tree_differences": diffs[:50], "tree_difference_count": len(diffs),
                  "imported_config": {k: inspect.get(k) for k in ("cmd", "env", "workdir")},
                  "sharing": sharing,
                  "notes": ["page cache warm (warm-up runs discarded); `sync` untimed after "
                            "every round so no run pays for another's writeback",
                            "umoci unpack as root; it also hashes the unpacked rootfs into an "
                            "mtree manifest and writes a runtime config.json",
                            "disk usage is allocated blocks of the whole store, each inode "
                            "counted once (so hard links and shared files count once)"]}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_import", __doc__, runs=(5, "timed runs per tool"), warmup=1,
                     warmup_help="discarded runs", imports_ctrun=True)
    b.option("--size-mb", type=int, default=100, min=5,
             help="file content of the image in MiB, over 5 layers (default 100)")
    b.option("--seed", type=int, default=1, help="seed of the generated image")
    b.main(measure)
