"""CgroupPool's refusals, which need no cgroup file system: a pool serves only starts it
can serve exactly as a fresh create would."""

from pathlib import Path

from ctrun.cgroups.detect import Layout
from ctrun.cgroups.pool import CgroupPool

RULES = ["c 1:3 rwm"]


def test_pure_v2_host_has_nothing_to_pool():
    # cgroup2 refuses rename(2): a pure v2 host keeps making its cgroups at start
    pool = CgroupPool("abcd1234", "p", RULES, Layout("v2", {}, Path("/nonexistent/v2")))
    assert not pool.usable
    assert pool.fill(3) == 0 and pool.entries() == []
    assert pool.take("web.abcd1234", RULES) is False


def test_other_device_rules_are_never_served_from_the_pool():
    # the allowlist is written before `ct` exists and cannot change after: an entry made
    # with other rules (or none, for a privileged container) would be wrong
    pool = CgroupPool("abcd1234", "p", RULES,
                      Layout("v1", {"memory": Path("/nonexistent/memory")}))
    assert pool.usable
    assert pool.take("web.abcd1234", None) is False
    assert pool.take("web.abcd1234", ["c 1:5 rwm"]) is False
    assert pool.take("web.abcd1234", RULES) is False   # empty (no such parent)
