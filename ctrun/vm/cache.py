"""Host-wide cache of what VM mode derives from the host (uncompressed kernel, initramfs,
agent binary, accelerator verdict): it depends on the host's packages, not on a store,
so every store (and every test store) shares it.  $CTRUN_VM_CACHE overrides the place."""

import hashlib
import os
from pathlib import Path


def path(*parts):
    d = Path(os.environ.get("CTRUN_VM_CACHE", "/var/cache/ctrun/vm"))
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d.joinpath(*parts)


def key(*items):
    """A short digest of what an artifact is made from (file identities, versions)."""
    h = hashlib.sha256()
    for it in items:
        if isinstance(it, Path) or (isinstance(it, str) and it.startswith("/")):
            st = os.stat(it)
            it = f"{it}:{st.st_size}:{st.st_mtime_ns}"
        h.update(str(it).encode() + b"\0")
    return h.hexdigest()[:16]


def publish(tmp, final):
    """Rename a finished artifact into place (atomic: readers never see half a file)."""
    os.replace(tmp, final)
    return final
