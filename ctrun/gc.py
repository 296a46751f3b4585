"""gc: finish what crashed verbs left in a store (temp dirs and files, dead containers'
cgroups and exit records, leases and port rules of gone containers, unused disks)."""

import os
import shutil

from . import config as cfgmod
from .backends import base
from .errors import Conflict, CtrunError, InvalidInput, NotFound, quote
from .lifecycle import State
from .state import read_json, stale_temp_files, status, write_json


def collect(ct):
    """Everything gc does for the store of lifecycle `ct` (its destroy removes bad
    entries); returns one line per thing done."""
    from . import cgroups
    store = ct.store
    done = []
    store.ensure()
    for top, n in [(d, n) for d in (store.containers, store.root / "tmp")
                   for n in os.listdir(d)]:
        if n.startswith(".destroy-") or (n.startswith(".tmp-") and top == store.containers):
            shutil.rmtree(top / n, ignore_errors=True)
            done.append(f"removed leftover {quote(n)}")
    parents, owned = set(), set()
    done += _remove_stale_temps(store, [store.root / "networks"])
    for n in store.container_names():
        cdir = store.container_dir(n)
        done += _remove_stale_temps(store, [cdir, cdir / "vm"])
        cfg = cfgmod.load(cdir)
        if cfg is None or not cfgmod.NAME_RE.fullmatch(n):
            done += _bad_entry(ct, n, cdir, cfg)
            continue
        parent, cgroup = cfg.cgroup()
        parents.add(parent)
        owned.add((parent, cgroup))
        with store.lock(n):
            st, state, live, ex = status(cdir)
            if st != State.RUNNING:
                if base.manager(cfg).discard():
                    done.append(f"removed cgroup of stopped container {n}")
                if state.get("start_id") and not (read_json(cdir / "exit.json") or {}).get(
                        "start_id") == state["start_id"]:
                    write_json(cdir / "exit.json", {"start_id": state["start_id"],
                                                    "exit_code": None,
                                                    "exit_reason": ex["exit_reason"],
                                                    "finished_at": None},
                               durable=False)
                    done.append(f"recorded lost exit of {n}")
    known = set(store.container_names())
    done += _network(store, known)
    from .serversock import remove_stale
    if remove_stale(str(store.run)):
        done.append("removed the socket of a dead ctrun server")
    from .images import store as images
    done += images.gc(store)
    from .vm import disk
    done += disk.gc(store)
    # only cgroups named with this store's id: the parent is shared by every store on the
    # host, and another store's cgroup is never an orphan of ours
    parents.add(os.environ.get("CTRUN_CGROUP_PARENT", cfgmod.DEFAULT_CGROUP_PARENT))
    done += _pools(store, parents)
    for parent in sorted(parents):
        for n in cgroups.children(parent, owner=store.short_id):
            if (parent, n) in owned:
                continue
            if _orphan_cgroup_removed(store, parent, n):
                done.append(f"removed orphan cgroup {parent}/{n}")
    from .runtime import lxcfs   # a host service: stopped only if no container uses it
    if lxcfs.release():
        done.append("stopped ctrun's LXCFS, which no container used")
    return done


def _pools(store, parents):
    """The start pools (ctrun.pools): a running warm server fills them again."""
    from . import pools
    cgs = nss = 0
    for parent in sorted(parents):
        c, n = pools.drain(store, parent)
        cgs, nss = cgs + c, nss + n
    if cgs or nss:
        return [f"emptied the start pools ({cgs} cgroups, {nss} network namespaces)"]
    return []


def _bad_entry(ct, n, cdir, cfg):
    """An entry no verb but destroy can use: a directory without a config (a crashed
    create's debris) or a name this version refuses.  Removed unless it runs."""
    if cfg is not None and status(cdir)[0] == State.RUNNING:
        return [f"kept running container {quote(n)}, whose name is invalid; remove it "
                f"with: ctrun destroy --force {quote(n)}"]
    try:
        ct.destroy(n, force=True)
    except NotFound:  # a destroy running meanwhile took it
        return []
    except CtrunError as e:  # one bad entry must not stop the rest of gc
        return [f"could not remove {quote(n)}: {e}"]
    return [f"removed {'invalid container' if cfg else 'leftover entry'} {quote(n)}"]


def _orphan_cgroup_removed(store, parent, cgroup):
    """Remove one of this store's cgroups that no container recorded when gc looked;
    re-checked under the name's lock, since a create and start may have made it since."""
    from . import cgroups
    name = cgroup[:-len(store.short_id) - 1]
    try:
        cfgmod.check_name(name)
    except InvalidInput:  # no container can have that name: nothing to race with
        return cgroups.manager(cgroup, parent=parent).discard()
    with store.lock(name):
        cfg = cfgmod.load(store.container_dir(name))
        if cfg and cfg.cgroup() == (parent, cgroup):
            return False
        return cgroups.manager(cgroup, parent=parent).discard()


def _network(store, known):
    """Leases and published-port rules whose container no longer exists."""
    done = []
    nets_dir = store.root / "networks"
    if not nets_dir.exists():
        return done
    from .network import ipam, networks
    for n in networks.list_networks(store):
        for ip, holder in ipam.leases(store, n["name"]).items():
            owner = holder.split("/")[0]
            if owner in known:
                continue
            try:  # a create holding the name's lock may be about to rename its directory
                with store.lock(owner, timeout=0):
                    if owner in set(store.container_names()):
                        continue
                    ipam.release(store, n["name"], holder)
                    done.append(f"released {ip} of missing container {holder}")
            except Conflict:
                pass
    try:
        from .network import nft
        # this store's rules only: the table is shared by every store on the host
        for owner in nft.owned_names("ct", store.short_id):
            if owner not in known:
                try:  # a create and start may have made it since gc listed the store
                    with store.lock(owner, timeout=0):
                        if (store.container_dir(owner) / cfgmod.FILE).exists():
                            continue
                        nft.unpublish(owner, store.short_id)
                except Conflict:
                    continue
                done.append(f"removed published ports of missing container {owner}")
            elif status(store.container_dir(owner))[0] != State.RUNNING:
                # its supervisor died with it (e.g. a killed `ctrun run`): nobody unpublished
                nft.unpublish(owner, store.short_id)
                done.append(f"removed published ports of stopped container {owner}")
    except CtrunError:
        pass
    return done


def _remove_stale_temps(store, dirs):
    """write_json temporary files whose writer died (killed half-way through a write)."""
    done = []
    for d in dirs:
        for tmp in stale_temp_files(d):
            tmp.unlink(missing_ok=True)
            done.append(f"removed stale temporary file {quote(str(tmp.relative_to(store.root)))}")
    return done

