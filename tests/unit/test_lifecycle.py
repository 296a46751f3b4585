"""The lifecycle's state rules, the backend choice and the persistent description, without
root: what each verb refuses in which state, and that an older store's config loads."""

import json

import pytest

from ctrun import backends, config, lifecycle
from ctrun.errors import Conflict


@pytest.mark.parametrize("verb,state,message", [
    ("start", "running", "container 'web1' is already running"),
    ("start", "stopping", "container 'web1' is already stopping; wait for it to stop"),
    ("stop", "stopped", "container 'web1' is not running"),
    ("kill", "created", "container 'web1' is not running; start it first"),
    ("exec", "stopped", "container 'web1' is not running; start it first: ctrun start web1"),
    ("freeze", "stopped", "container 'web1' is not running; only a running container can be "
                          "frozen"),
    ("destroy", "running", "container 'web1' is running; stop it first or use --force"),
    ("edit", "stopping", "container 'web1' is stopping; wait for it to stop"),
])
def test_a_verb_in_a_wrong_state_gets_its_one_line_refusal(verb, state, message):
    with pytest.raises(Conflict) as e:
        lifecycle.require(verb, "web1", state)
    assert str(e.value) == message


def test_legal_transitions():
    assert lifecycle.may("start", "created") and lifecycle.may("start", "stopped")
    assert lifecycle.may("destroy", "stopping") and not lifecycle.may("destroy", "running")
    for verb in ("stop", "kill", "exec", "freeze", "thaw", "stats"):
        assert lifecycle.may(verb, "running")
        assert not any(lifecycle.may(verb, s) for s in ("created", "stopping", "stopped"))


def test_the_mode_chooses_the_backend_once():
    assert backends.for_mode("vm").mode == "vm"
    assert backends.for_mode("container").mode == "container"
    assert backends.for_create(vm=True) is backends.for_mode("vm")


def test_a_config_of_an_older_store_loads_with_defaults(tmp_path):
    """A config.json written before the version field (and the cgroup keys) existed."""
    (tmp_path / "config.json").write_text(json.dumps({"name": "old", "image": "busybox",
                                                      "cmd": ["sleep", "1"]}))
    cfg = config.load(tmp_path)
    assert (cfg.name, cfg.cmd, cfg.version, cfg.mode) == ("old", ["sleep", "1"], 0, "container")
    assert cfg.cgroup() == ("ctrun", "old")
    cfg.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["version"] == config.VERSION and saved["cgroup_name"] == ""
    assert config.load(tmp_path) == cfg


def test_config_keeps_every_key_the_store_holds(tmp_path):
    cfg = config.Config("web1", cgroup_name="web1.0123abcd", cgroup_parent="p",
                        created_at="2026-01-01T00:00:00Z", onboot=True)
    cfg.save(tmp_path)
    assert config.load(tmp_path).cgroup() == ("p", "web1.0123abcd")
    assert config.load(tmp_path / "missing") is None
    (tmp_path / "config.json").write_text("[1]")  # not a config: as missing
    assert config.load(tmp_path) is None
