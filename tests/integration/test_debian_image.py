"""The debian image: debootstrap from Debian's archive (the host's mirror or deb.debian.org),
run as a system container, and the errors of a bad suite, a bad package and an unreachable
archive.  The build takes a minute or more and needs the network, so it is marked slow and
done once for the session (conftest's debian_store, with sysvinit-core added for
test_sysvinit)."""

import os
import shutil
import socket
from pathlib import Path

import pytest

import conftest
from ctrun.images import debootstrap
from test_cli_errors import assert_clean_error

needs_debootstrap = pytest.mark.skipif(
    shutil.which("debootstrap", path=os.pathsep.join([os.environ.get("PATH", ""),
                                                      *debootstrap.SBIN])) is None,
    reason="debootstrap is not installed (apt-get install debootstrap)")


def error_line(r):
    """The one error line of a failed build (progress lines may come before it)."""
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("ctrun: error: ")]
    assert len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr
    return errors[0]


def assert_no_image(cli, store):
    assert cli("image", "inspect", "debian").returncode == 3
    for d in (store / "images", store / "layers"):   # no temp dir or layer left either
        assert not d.exists() or not list(d.iterdir()) or os.listdir(d) == ["sha256"] \
            and not os.listdir(d / "sha256")


@pytest.fixture(scope="module")
def debian(debian_store):
    """A CLI on a store of the module's own holding the session's debian image."""
    with conftest.own_store() as root:
        conftest.copy_image(debian_store, root, "debian")
        yield conftest.CLI(root)


@pytest.mark.slow
@needs_debootstrap
def test_build_records_the_suite_and_cleans_up(debian_store):
    debian = conftest.CLI(debian_store)   # the store the session built the image in
    info = debian.json("image", "inspect", "debian")
    assert info["built_by"] == "debootstrap"
    assert (info["suite"], info["variant"]) == ("bookworm", "minbase")
    assert info["cmd"] == ["/usr/bin/tini", "--", "sleep", "infinity"]
    assert info["debian_version"].startswith("12")
    assert {"tini", "sysvinit-core"} <= set(info["include"]) and info["mirror"].startswith(("http", "file"))
    (rootfs,) = map(Path, info["layer_dirs"])
    assert not list((rootfs / "var/cache/apt/archives").glob("*.deb"))
    assert not list((rootfs / "var/lib/apt/lists").glob("*_*"))
    assert (rootfs / "etc/resolv.conf").read_text() == ""   # not the host's
    assert (rootfs / "etc/hostname").read_text() == "debian\n"
    assert not (rootfs / "debootstrap").exists()
    images = debian.root / "images"
    assert sorted(p.name for p in images.iterdir()) == ["debian"]   # no temp dirs left
    row = debian("image", "list", check=True).stdout.splitlines()[1].split()
    assert row[:2] == ["debian", "debootstrap"]


@pytest.mark.slow
@needs_debootstrap
def test_run_shows_bookworm(debian):
    r = debian("run", "--rm", "debian", "--", "cat", "/etc/os-release", check=True)
    assert "VERSION_CODENAME=bookworm" in r.stdout
    containers = debian.root / "containers"
    assert not containers.exists() or not list(containers.iterdir())   # --rm removed it


@pytest.mark.slow
@needs_debootstrap
def test_system_container_starts_and_stops_promptly(debian):
    debian("create", "d", "--image", "debian", check=True)
    try:
        debian("start", "d", check=True)
        debian.wait_state("d", "running")
        r = debian("exec", "d", "--", "cat", "/etc/os-release", check=True)
        assert "VERSION_CODENAME=bookworm" in r.stdout
        r = debian("exec", "d", "--", "ps", "-o", "comm=", "-p", "1", check=True)
        assert r.stdout.strip() == "tini"
        # a generous grace period: only a SIGKILL would make the exit code 137
        debian("stop", "--time", "60", "d", check=True)
        info = debian.json("inspect", "d")
        assert info["state"] == "stopped" and info["exit_reason"] == "stopped"
        assert info["exit_code"] == 128 + 15   # tini passed SIGTERM on to sleep and left
    finally:
        debian("destroy", "--force", "d")


@pytest.mark.slow
@needs_debootstrap
def test_options_do_not_silently_reuse_an_existing_image(debian):
    r = debian("image", "build", "debian", "--suite", "trixie")
    assert_clean_error(r, "'debian' exists", "--force")
    assert debian.json("image", "inspect", "debian")["suite"] == "bookworm"


@needs_debootstrap
@pytest.mark.parametrize("suite", ["nosuchsuite", "Bad/Suite"])
def test_bad_suite_is_one_line_and_leaves_no_image(cli, store, suite):
    r = cli("image", "build", "debian", "--suite", suite)
    assert_clean_error(r, "suite", suite)
    assert_no_image(cli, store)


@needs_debootstrap
def test_unreachable_archive_is_one_line_and_leaves_no_image(cli, store, monkeypatch):
    # a bound socket that never listens: connections to it are refused, whatever runs here
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/debian"
        monkeypatch.setenv(debootstrap.MIRROR_ENV, url)
        r = cli("image", "build", "debian")
    line = error_line(r)
    assert line.startswith(f"ctrun: error: cannot reach the Debian archive at {url}: "), line
    assert "refused" in line.lower() and debootstrap.MIRROR_ENV in line
    assert_no_image(cli, store)


@pytest.mark.slow
@needs_debootstrap
def test_unknown_package_is_one_line_and_leaves_no_image(cli, store):
    r = cli("image", "build", "debian", "--include", "ctrun-no-such-package", timeout=600)
    if "cannot reach the Debian archive" in r.stderr:
        pytest.skip("no Debian archive reachable")
    line = error_line(r)
    assert "no package ctrun-no-such-package in debian bookworm" in line
    assert "--include" in line
    assert_no_image(cli, store)


# ---- pure policy: the host's mirror, the options, the error classification ------------------

DEB822 = """\
Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main contrib

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_archive_uris_pick_the_main_archive():
    assert debootstrap.archive_uris(DEB822, deb822=True) == ["http://mirror.example/debian"]
    assert debootstrap.archive_uris("Types: deb\nURIs: http://a/debian\nSuites: bookworm\n"
                                    "Components: main\nEnabled: no\n", deb822=True) == []
    listed = ("# deb http://old/debian bookworm main\n"
              "deb cdrom:[Debian]/ bookworm main\n"
              "deb http://security.debian.org/debian-security bookworm-security main\n"
              "deb [arch=amd64 signed-by=/k.gpg] https://m.example/debian bookworm main\n")
    assert debootstrap.archive_uris(listed, deb822=False) == ["https://m.example/debian"]


def test_host_mirror_only_on_debian(tmp_path):
    (tmp_path / "apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "apt/sources.list.d/debian.sources").write_text(DEB822)
    (tmp_path / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n')
    assert debootstrap.host_mirror(tmp_path) is None
    (tmp_path / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
    assert debootstrap.host_mirror(tmp_path) == "http://mirror.example/debian"


def test_packages_merge_and_validate():
    assert debootstrap.packages(["tini", "procps"], ["less,tini", "curl"]) == \
        ["tini", "procps", "less", "curl"]
    assert debootstrap.packages(["tini"], "vim, git") == ["tini", "vim", "git"]
    with pytest.raises(debootstrap.InvalidInput, match="package name"):
        debootstrap.packages([], "--foo")


@pytest.mark.parametrize("output,log,kind,words", [
    (["E: No such script: /usr/share/debootstrap/scripts/x"], [], "InvalidInput",
     ["unknown debian suite 'x'"]),
    (["E: Failed getting release file http://m/debian/dists/x/Release"],
     ["2025-01-01 00:00:00 ERROR 404: Not Found."], "InvalidInput", ["not in the Debian archive"]),
    (["E: Failed getting release file http://m/debian/dists/x/Release"],
     ["failed: Connection refused."], "CtrunError",
     ["cannot reach the Debian archive at http://m/debian: Connection refused;"]),
    (["E: Couldn't download packages: libc6"], ["failed: Network is unreachable."],
     "CtrunError", ["cannot reach", "Network is unreachable"]),
    (["E: Couldn't find these debs: nope"], [], "InvalidInput", ["no package nope"]),
    (["E: something new"], ["last words"], "CtrunError",
     ["debootstrap failed: something new (last log line: last words)"]),
])
def test_failure_messages(output, log, kind, words):
    e = debootstrap.failure(output, log, "x", "minbase", "http://m/debian")
    assert type(e).__name__ == kind
    msg = str(e)
    assert "\n" not in msg and msg[0].islower()
    for w in words:
        assert w in msg, msg
