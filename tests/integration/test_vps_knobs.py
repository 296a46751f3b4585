"""vzctl set's VPS knobs, each checked from inside the container: hostname, nameserver and
searchdomain (live), userpasswd (the /etc/shadow hash verifies), ssh-key (modes, owner,
planted symlinks refused) and onboot (the unit, `ctrun start --onboot`)."""

import json
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import pytest

from test_cli_errors import assert_clean_error

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHTlZi9zQore9X47BbvM797takVsqsLMEflC/56G8qYQ "
       "test@vps-knobs")
SECRET = "Vps-Knob-s3cret-4711"


@pytest.fixture
def keyfile(tmp_path):
    p = tmp_path / "id.pub"
    p.write_text(KEY + "\n")
    return str(p)


@pytest.fixture
def units(tmp_path, monkeypatch):
    """Where the onboot unit goes: a directory of the test's, never the host's /etc."""
    d = tmp_path / "systemd"
    monkeypatch.setenv("CTRUN_SYSTEMD_DIR", str(d))
    return d


def up(cli, name, *opts):
    cli("run", "-d", "--name", name, *opts, "busybox", check=True)  # busybox init


def inside(cli, name, script):
    return cli("exec", name, "--", "sh", "-c", script, check=True).stdout


def conf(store, name):
    return json.loads((Path(store) / "containers" / name / "config.json").read_text())


def test_hostname_is_set_live(cli, store):
    up(cli, "h1", "--hostname", "before")
    assert inside(cli, "h1", "hostname").strip() == "before"
    cli("set", "h1", "--hostname", "after.example.net", check=True)
    out = inside(cli, "h1", "hostname; cat /etc/hostname; grep after /etc/hosts")
    host, etc_hostname, hosts_line = out.splitlines()
    assert host == etc_hostname == "after.example.net"
    assert hosts_line.split()[1:] == ["after.example.net", "h1"]
    assert conf(store, "h1")["hostname"] == "after.example.net"
    assert_clean_error(cli("set", "h1", "--hostname", "bad_name!"), "bad_name!")
    assert inside(cli, "h1", "hostname").strip() == "after.example.net"


def test_nameserver_and_searchdomain_rewrite_resolv_conf_live(cli, store):
    up(cli, "r1", "--nameserver", "192.0.2.53", "--searchdomain", "corp.example")
    assert inside(cli, "r1", "cat /etc/resolv.conf") == (
        "nameserver 192.0.2.53\nsearch corp.example\n")
    cli("set", "r1", "--nameserver", "198.51.100.1", "--nameserver", "198.51.100.2",
        "--searchdomain", "a.example", "--searchdomain", "b.example", check=True)
    assert inside(cli, "r1", "cat /etc/resolv.conf") == (
        "nameserver 198.51.100.1\nnameserver 198.51.100.2\nsearch a.example b.example\n")
    net = conf(store, "r1")["net"]
    assert net["dns"] == ["198.51.100.1", "198.51.100.2"]
    assert net["search"] == ["a.example", "b.example"]
    assert_clean_error(cli("set", "r1", "--nameserver", "not-an-ip"), "not-an-ip")
    assert_clean_error(cli("set", "r1", "--searchdomain", "bad domain"), "bad domain")


def _cmdlines_with(secret, stop):
    """Poll every process's argv until stop is set; the ones that held the secret."""
    seen = []
    while not stop.is_set():
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if secret.encode() in (p / "cmdline").read_bytes():
                        seen.append(p.name)
                except OSError:
                    pass
    return seen


def _assert_nowhere_in_store(store, secret):
    for path in Path(store).rglob("*"):
        # (a pooled network namespace's nsfs file, bound there, holds no data)
        if path.is_file() and not path.is_symlink() and not os.path.ismount(path):
            assert secret.encode() not in path.read_bytes(), path


def _assert_password(cli, name, user, password):
    line = next(ln for ln in inside(cli, name, "cat /etc/shadow").splitlines()
                if ln.startswith(user + ":"))
    hashed = line.split(":")[1]
    assert hashed.startswith("$6$")
    assert crypt.crypt(password, hashed) == hashed
    assert crypt.crypt(password + "x", hashed) != hashed


def test_userpasswd_from_stdin_on_a_running_container(cli, store):
    up(cli, "p1")
    stop = threading.Event()
    seen = []
    watcher = threading.Thread(target=lambda: seen.extend(_cmdlines_with(SECRET, stop)))
    watcher.start()
    try:
        r = cli("set", "p1", "--userpasswd", "-", input=f"root:{SECRET}\n")
    finally:
        stop.set()
        watcher.join()
    assert r.returncode == 0, r.stderr
    assert not seen, f"the password was in the argv of processes {seen}"
    _assert_password(cli, "p1", "root", SECRET)
    assert inside(cli, "p1", "stat -c '%a %u %g' /etc/shadow").split() == ["640", "0", "0"]
    _assert_nowhere_in_store(store, SECRET)
    # a password in argv is refused; so is a user the container does not have
    assert_clean_error(cli("set", "p1", "--userpasswd", "root:inargv"), "stdin")
    assert_clean_error(cli("set", "p1", "--userpasswd", "-", input="ghost:pw\n"), "ghost")


def test_userpasswd_file_on_create_and_on_a_stopped_container(cli, store, tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text(f"root:{SECRET}\n")
    cli("create", "p2", "--userpasswd-file", str(secret_file), "--", "sleep", "600",
        check=True)
    cli("start", "p2", check=True)
    _assert_password(cli, "p2", "root", SECRET)
    cli("kill", "p2", check=True)
    cli.wait_state("p2", "stopped")
    secret_file.write_text("nobody:second-Secret\n")
    cli("set", "p2", "--userpasswd-file", str(secret_file), check=True)
    cli("start", "p2", check=True)
    _assert_password(cli, "p2", "nobody", "second-Secret")
    _assert_password(cli, "p2", "root", SECRET)
    _assert_nowhere_in_store(store, SECRET)
    _assert_nowhere_in_store(store, "second-Secret")


def _key_state(cli, name):
    return inside(cli, name, "stat -c '%a %u %g' /root/.ssh /root/.ssh/authorized_keys; "
                             "cat /root/.ssh/authorized_keys")


def test_ssh_key_is_appended_with_modes_and_owner(cli, store, keyfile):
    up(cli, "k1")
    inside(cli, "k1", "mkdir -p /root/.ssh && chmod 755 /root/.ssh && "
                      "echo ssh-rsa AAAAold old@key > /root/.ssh/authorized_keys")
    cli("set", "k1", "--ssh-key", keyfile, check=True)
    cli("set", "k1", "--ssh-key", keyfile, check=True)  # the same key is added once
    assert _key_state(cli, "k1").splitlines() == [
        "700 0 0", "600 0 0", "ssh-rsa AAAAold old@key", KEY]
    # a key for another user lands in that user's home, owned by the user
    inside(cli, "k1", "mkdir /home/op && chown 1000:1000 /home/op && "
                      "echo op:x:1000:1000::/home/op:/bin/sh >> /etc/passwd")
    cli("set", "k1", "--ssh-key", keyfile, "--ssh-user", "op", check=True)
    assert inside(cli, "k1", "stat -c '%a %u %g' /home/op/.ssh /home/op/.ssh/authorized_keys"
                  ).split() == ["700", "1000", "1000", "600", "1000", "1000"]
    assert_clean_error(cli("set", "k1", "--ssh-key", str(Path(keyfile).parent / "none")),
                       "none")
    priv = Path(keyfile).parent / "id"
    priv.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n")
    assert_clean_error(cli("set", "k1", "--ssh-key", str(priv)), "public key")


def test_ssh_key_on_create(cli, store, keyfile):
    cli("create", "k2", "--ssh-key", keyfile, "--", "sleep", "600", check=True)
    cli("start", "k2", check=True)
    assert _key_state(cli, "k2").splitlines() == ["700 0 0", "600 0 0", KEY]


def test_planted_symlinks_are_refused(cli, store, keyfile, tmp_path):
    up(cli, "k3")
    # first links to decoys on the host: were ctrun to follow a link through the host's
    # view, it would write there, not into the host's /etc (the cases after these)
    decoy_dir, decoy_file = tmp_path / "decoy", tmp_path / "decoy-keys"
    decoy_dir.mkdir(mode=0o755)
    decoy_file.write_text("decoy\n")
    inside(cli, "k3", f"ln -s {decoy_dir} /root/.ssh")
    assert_clean_error(cli("set", "k3", "--ssh-key", keyfile), "/root/.ssh")
    assert not list(decoy_dir.iterdir()) and decoy_dir.stat().st_mode & 0o777 == 0o755
    inside(cli, "k3", f"rm /root/.ssh && mkdir /root/.ssh && "
                      f"ln -s {decoy_file} /root/.ssh/authorized_keys")
    assert_clean_error(cli("set", "k3", "--ssh-key", keyfile), "authorized_keys")
    assert decoy_file.read_text() == "decoy\n"
    # then the container's own /etc and /etc/shadow: left as they were
    before = inside(cli, "k3", "stat -c '%a %u %g' /etc; ls /etc; md5sum /etc/shadow")
    inside(cli, "k3", "rm -r /root/.ssh && ln -s /etc /root/.ssh")
    assert_clean_error(cli("set", "k3", "--ssh-key", keyfile), "/root/.ssh")
    inside(cli, "k3", "rm /root/.ssh && mkdir /root/.ssh && "
                      "ln -s /etc/shadow /root/.ssh/authorized_keys")
    assert_clean_error(cli("set", "k3", "--ssh-key", keyfile), "authorized_keys")
    inside(cli, "k3", "rm /root/.ssh/authorized_keys && "
                      "ln /etc/shadow /root/.ssh/authorized_keys")
    assert_clean_error(cli("set", "k3", "--ssh-key", keyfile), "hard link")
    assert inside(cli, "k3", "stat -c '%a %u %g' /etc; ls /etc; md5sum /etc/shadow") == before
    assert not os.path.exists("/etc/authorized_keys")


def test_userns_container_gets_keys_owned_by_its_root(cli, store, keyfile):
    up(cli, "k4", "--userns")
    cli("set", "k4", "--ssh-key", keyfile, check=True)
    assert _key_state(cli, "k4").splitlines() == ["700 0 0", "600 0 0", KEY]
    base = conf(store, "k4")["userns_base"]
    st = (Path(store) / "containers/k4/upper/root/.ssh/authorized_keys").stat()
    assert (st.st_uid, st.st_gid) == (base, base)
    cli("kill", "k4", check=True)
    cli.wait_state("k4", "stopped")
    assert_clean_error(cli("set", "k4", "--ssh-key", keyfile), "start it")


def _unit(units):
    found = sorted(units.glob("ctrun-onboot*.service"))
    assert len(found) == 1, found
    return found[0]


def test_onboot_writes_a_unit_and_start_onboot_starts_the_marked(cli, store, units, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    cli("create", "a-bad", "--onboot", "yes", "-v", f"{vol}:/data", "--", "sleep", "600",
        check=True)
    vol.rmdir()  # its start fails: reported, and the others still start
    cli("create", "b-good", "--", "sleep", "600", check=True)
    cli("create", "c-not", "--", "sleep", "600", check=True)
    cli("set", "b-good", "--onboot", "yes", check=True)
    assert conf(store, "b-good")["onboot"] is True and conf(store, "c-not")["onboot"] is False
    unit = _unit(units)
    text = unit.read_text()
    for line in ("Type=oneshot", "RemainAfterExit=yes", "After=network-online.target",
                 "WantedBy=multi-user.target"):
        assert line in text.splitlines()
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    assert exec_start.endswith(f"--root {store} start --onboot")
    assert os.path.isabs(exec_start[len("ExecStart="):].split()[0])
    assert (units / "multi-user.target.wants" / unit.name).resolve() == unit.resolve()

    r = cli("start", "--onboot")
    assert r.returncode != 0
    assert r.stdout.split() == ["b-good"]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("ctrun: error: a-bad: "), r.stderr
    states = {row["name"]: row["state"]
              for row in json.loads(cli("list", "-a", "--format", "json").stdout)}
    assert states == {"a-bad": "created", "b-good": "running", "c-not": "created"}
    assert_clean_error(cli("start", "--onboot", "b-good"), "not both")
    assert_clean_error(cli("set", "c-not", "--onboot", "maybe"), "maybe")

    # the unit goes with the last marked container
    cli("set", "b-good", "--onboot", "no", check=True)
    assert _unit(units)
    cli("destroy", "a-bad", check=True)
    assert not list(units.glob("ctrun-onboot*.service"))
    assert not list((units / "multi-user.target.wants").iterdir())


def test_onboot_unit_passes_systemd_analyze_verify(cli, store, units):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed on this host: the unit is not verified")
    cli("create", "v1", "--onboot", "yes", "--", "sleep", "600", check=True)
    unit = _unit(units)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, cwd=unit.parent)
    assert r.returncode == 0, r.stderr
    assert "ctrun-onboot" not in r.stderr, r.stderr


def test_vps_knobs_in_the_python_api(ct, units, keyfile):
    ct.create("api1", cmd=["sleep", "600"], hostname="one", nameserver=["192.0.2.7"],
              searchdomain=["x.example"], onboot=True, userpasswd=("root", SECRET),
              ssh_key=keyfile)
    ct.start("api1")
    ct.set_vps("api1", hostname="two", searchdomain=["y.example"])
    code, out = ct.exec_output("api1", ["sh", "-c", "hostname; cat /etc/resolv.conf "
                                        "/root/.ssh/authorized_keys; grep ^root: /etc/shadow"])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:4] == ["two", "nameserver 192.0.2.7", "search y.example", KEY]
    hashed = lines[4].split(":")[1]
    assert crypt.crypt(SECRET, hashed) == hashed
    assert ct.inspect("api1")["config"]["onboot"] is True
    assert [n for n, err in ct.start_onboot()] == []  # already running: left alone
    ct.stop("api1", timeout=1)
    assert ct.start_onboot() == [("api1", None)]


def test_ip_add_on_create_and_set(cli, store):
    from conftest import bridge_network
    sub = 150 + os.getpid() % 50
    with bridge_network(cli, f"vk{os.getpid() % 10000}", f"10.215.{sub}.0/24") as net:
        extra, later = f"10.215.{sub}.201", f"10.215.{sub}.202"
        assert_clean_error(cli("create", "i0", "--net", net, "--ip-add", "nope"), "nope")
        assert_clean_error(cli("create", "i0", "--ip-add", extra), "bridged")
        up(cli, "i1", "--net", net, "--ip-add", extra)
        cli("set", "i1", "--ip-add", later, check=True)
        addrs = inside(cli, "i1", "ip -4 -o addr show eth0")
        assert f"{extra}/24" in addrs and f"{later}/24" in addrs
        assert conf(store, "i1")["net"]["extra_ips"] == [extra, later]
        leases = cli.json("network", "inspect", net)["leases"]
        assert leases[extra] == f"i1/{extra}" and leases[later] == f"i1/{later}"
        cli("set", "i1", "--ip-del", extra, check=True)
        assert f"{extra}/" not in inside(cli, "i1", "ip -4 -o addr show eth0")
        assert_clean_error(cli("set", "i1", "--ip-add", "x.y"), "x.y")
