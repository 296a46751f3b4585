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


def test_a_front_end_names_a_mode_and_gets_its_backend():
    """The lab picks a mode by name: create_options is for_create's inverse, and only the VM
    backend sizes a guest."""
    for mode in backends.MODES:
        assert backends.for_create(**backends.create_options(mode)).mode == mode
    assert backends.for_mode("vm").guest and not backends.for_mode("container").guest


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


class Recorder:
    """A backend that records the lifecycle's calls; its process is this test's own."""

    mode = "recorder"
    calls = []

    def __init__(self, store, warn=None):
        self.store = store

    def signal(self, cdir, live, signum):
        self.calls.append(("signal", live["pid"], signum))

    def stop(self, name, cdir, cfg, live, timeout):
        from ctrun.state import read_json, write_json
        self.calls.append(("stop", name, timeout))
        sid = read_json(cdir / "state.json")["start_id"]
        write_json(cdir / "exit.json", {"start_id": sid, "exit_code": 0,
                                        "exit_reason": "exited", "finished_at": None})

    def describe(self, cdir, cfg, pid):
        return {"accel": None}, {}

    def check_edit(self, name, changes):
        self.calls.append(("check_edit", name, changes))


def test_the_lifecycle_calls_the_backend_its_mode_chose(tmp_path, monkeypatch):
    """kill and stop on a running container (this process stands in for its init) reach
    the chosen backend once each, under the lifecycle's state checks; no root needed."""
    import os
    import signal
    from ctrun import state
    from ctrun.api import Ctrun
    monkeypatch.setattr(backends, "for_mode", lambda mode: Recorder)
    Recorder.calls = []
    ct = Ctrun(root=tmp_path)
    cdir = tmp_path / "containers" / "web1"
    cdir.mkdir(parents=True)
    config.Config("web1", mode="recorder").save(cdir)
    state.write_json(cdir / "state.json", {})
    with pytest.raises(Conflict, match="is not running; start it first"):
        ct.kill("web1", "TERM")
    state.write_json(cdir / "state.json", {"start_id": "s1"})
    state.write_json(cdir / "live.json", {"start_id": "s1", "pid": os.getpid(),
                                          "pid_start": state.proc_start_time(os.getpid())})
    ct.kill("web1", "TERM")
    monkeypatch.setattr("ctrun.backends.base.thaw_if_frozen", lambda cfg: None)
    assert ct.stop("web1", timeout=3)["state"] == "stopped"
    assert Recorder.calls == [("signal", os.getpid(), signal.SIGTERM), ("stop", "web1", 3)]
    with pytest.raises(Conflict, match="is not running$"):
        ct.stop("web1")


def test_a_vps_verb_runs_under_the_lifecycle_and_asks_the_backend(tmp_path, monkeypatch):
    """set_vps (inherited from vpsverbs) on a stopped container: the backend's check, the
    saved config, the store's onboot unit; --no-save refused where nothing would keep it."""
    from ctrun import onboot, state
    from ctrun.api import Ctrun
    monkeypatch.setattr(backends, "for_mode", lambda mode: Recorder)
    monkeypatch.setenv("CTRUN_SYSTEMD_DIR", str(tmp_path / "units"))
    Recorder.calls = []
    ct = Ctrun(root=tmp_path / "store")
    cdir = tmp_path / "store" / "containers" / "web1"
    cdir.mkdir(parents=True)
    config.Config("web1", mode="recorder").save(cdir)
    state.write_json(cdir / "state.json", {})
    ct.set_vps("web1", onboot=True)
    assert Recorder.calls == [("check_edit", "web1", {
        "hostname": None, "nameserver": False, "searchdomain": False, "userpasswd": None,
        "ssh_key": []})]
    assert config.load(cdir).onboot
    assert (tmp_path / "units" / onboot.unit_name(ct.store)).is_file()
    with pytest.raises(Conflict, match="is not running and --no-save keeps nothing"):
        ct.set_vps("web1", onboot=False, save=False)
    assert config.load(cdir).onboot
