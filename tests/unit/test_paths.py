"""ctrun.runtime.paths against the real kernel, with tmp_path as a hostile container root.

Every test plants symlinks that would escape the root if followed naively and checks that
whatever got opened or created lives under the root, that the host's /etc is untouched,
and that no descriptor leaked.
"""

import os
import stat
import uuid

import pytest

from ctrun.errors import CommandNotFound, InvalidInput
from ctrun.runtime import paths


def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave the descriptor table, the host's / and /etc as it found them.

    (An escaping regression would create its junk right there: this names it.)
    """
    host_before = {d: sorted(os.listdir(d)) for d in ("/", "/etc")}
    fds_before = _open_fds()
    yield
    assert _open_fds() == fds_before, "descriptor leak"
    for d, before in host_before.items():
        assert sorted(os.listdir(d)) == before, f"the host's {d} changed"


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return os.path.realpath(r)


@pytest.fixture
def root_fd(root):
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


@pytest.fixture
def tag():
    """A name that exists nowhere on the host, to prove nothing got created there."""
    return "ctrun-test-" + uuid.uuid4().hex[:12]


def where(fd):
    """Real host path of what ``fd`` refers to; closes it."""
    try:
        return os.readlink(paths.fd_path(fd))
    finally:
        os.close(fd)


def inside(p, root):
    return p == root or p.startswith(root + "/")


def test_fd_path():
    assert paths.fd_path(7) == "/proc/self/fd/7"


# --- open_in_root -------------------------------------------------------------------------

def test_open_plain_file_with_path_or_fd_root(root, root_fd):
    os.makedirs(f"{root}/etc")
    with open(f"{root}/etc/hosts", "w") as f:
        f.write("mine\n")
    assert where(paths.open_in_root(root, "/etc/hosts")) == f"{root}/etc/hosts"
    assert where(paths.open_in_root(root_fd, "etc/hosts")) == f"{root}/etc/hosts"
    assert where(paths.open_in_root(root_fd, "/")) == root
    assert where(paths.open_in_root(root_fd, "")) == root


def test_absolute_symlink_stays_in_root(root, root_fd):
    os.makedirs(f"{root}/etc")
    os.symlink("/etc", f"{root}/hostetc")
    assert where(paths.open_in_root(root_fd, "/hostetc")) == f"{root}/etc"
    # /etc/passwd exists on the host, not in the root: the link must not reach it
    os.symlink("/etc/passwd", f"{root}/passwd")
    with pytest.raises(FileNotFoundError):
        os.close(paths.open_in_root(root_fd, "/passwd", os.O_RDONLY))


def test_dotdot_chain_clamps_at_root(root, root_fd):
    os.makedirs(f"{root}/etc")
    with open(f"{root}/etc/passwd", "w") as f:
        f.write("container passwd\n")
    os.makedirs(f"{root}/a/b")
    os.symlink("../../../../../../../../etc/passwd", f"{root}/a/b/pw")
    fd = paths.open_in_root(root_fd, "/a/b/pw", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"container passwd\n"
    finally:
        assert where(fd) == f"{root}/etc/passwd"
    # the same with ".." in the requested path itself
    assert where(paths.open_in_root(root_fd, "../../../../etc/passwd")) == f"{root}/etc/passwd"


def test_symlink_as_intermediate_component(root, root_fd):
    os.makedirs(f"{root}/real/sub")
    os.symlink("/real", f"{root}/link")
    os.symlink("../../../../..", f"{root}/up")
    assert where(paths.open_in_root(root_fd, "/link/sub")) == f"{root}/real/sub"
    # "up" lands on the root, so up/etc is root/etc: missing, not the host's /etc
    with pytest.raises(FileNotFoundError):
        os.close(paths.open_in_root(root_fd, "/up/etc/passwd"))
    assert where(paths.open_in_root(root_fd, "/up/real")) == f"{root}/real"


def test_symlink_loop_is_invalid_input(root, root_fd):
    os.symlink("b", f"{root}/a")
    os.symlink("a", f"{root}/b")
    with pytest.raises(InvalidInput, match="'/a/x'"):
        paths.open_in_root(root_fd, "/a/x")
    with pytest.raises(InvalidInput):
        paths.open_in_root(root, "/a")


def test_non_directory_component_is_invalid_input(root, root_fd):
    open(f"{root}/file", "w").close()
    with pytest.raises(InvalidInput, match="not a directory"):
        paths.open_in_root(root_fd, "/file/x")


def test_magic_links_are_refused():
    # /proc is mounted in this root ("/"): its magic links must still not be followed
    with pytest.raises(InvalidInput, match="magic link"):
        paths.open_in_root("/", "/proc/self/root/etc/passwd")


def test_nofollow_returns_the_link_itself(root, root_fd):
    os.symlink("/etc", f"{root}/l")
    fd = paths.open_in_root(root_fd, "/l", os.O_PATH | os.O_NOFOLLOW)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_create_through_open_in_root(root, root_fd, tag):
    os.symlink(f"/{tag}", f"{root}/out")  # dangling, and absolute
    fd = paths.open_in_root(root_fd, "/out", os.O_WRONLY | os.O_CREAT, 0o600)
    assert where(fd) == f"{root}/{tag}"
    assert stat.S_IMODE(os.stat(f"{root}/{tag}").st_mode) & 0o077 == 0
    assert not os.path.lexists(f"/{tag}")


# --- mkdirs_in_root -----------------------------------------------------------------------

def test_mkdirs_creates_and_reuses(root, root_fd):
    assert where(paths.mkdirs_in_root(root_fd, "/a/b/c")) == f"{root}/a/b/c"
    assert os.path.isdir(f"{root}/a/b/c")
    assert where(paths.mkdirs_in_root(root, "a/b/c")) == f"{root}/a/b/c"
    assert where(paths.mkdirs_in_root(root_fd, "/")) == root
    assert where(paths.mkdirs_in_root(root_fd, "/../../x/./y/")) == f"{root}/x/y"


def test_mkdirs_through_absolute_symlink(root, root_fd, tag):
    os.makedirs(f"{root}/etc")
    os.symlink("/etc", f"{root}/data")
    assert where(paths.mkdirs_in_root(root_fd, f"/data/{tag}/sub")) == f"{root}/etc/{tag}/sub"
    assert not os.path.lexists(f"/etc/{tag}")


def test_mkdirs_through_dotdot_chain(root, root_fd, tag):
    os.makedirs(f"{root}/srv/vol")
    os.symlink(f"../../../../../../../tmp/{tag}", f"{root}/srv/vol/data")
    got = where(paths.mkdirs_in_root(root_fd, "/srv/vol/data/sub"))
    assert got == f"{root}/tmp/{tag}/sub"
    assert not os.path.lexists(f"/tmp/{tag}")


def test_mkdirs_through_dangling_symlinks(root, root_fd, tag):
    # intermediate dangling absolute link, then a relative one that climbs out
    os.symlink(f"/{tag}/deep", f"{root}/d")
    assert where(paths.mkdirs_in_root(root_fd, "/d/x")) == f"{root}/{tag}/deep/x"
    os.makedirs(f"{root}/p")
    os.symlink(f"../../../{tag}-2", f"{root}/p/q")
    assert where(paths.mkdirs_in_root(root_fd, "/p/q")) == f"{root}/{tag}-2"
    assert os.path.islink(f"{root}/p/q") and os.path.islink(f"{root}/d")
    assert not os.path.lexists(f"/{tag}") and not os.path.lexists(f"/{tag}-2")


def test_mkdirs_symlink_chain_that_creates_its_own_targets(root, root_fd):
    os.symlink("l2/x", f"{root}/l")
    assert where(paths.mkdirs_in_root(root_fd, "/l")) == f"{root}/l2/x"


def test_mkdirs_loop_and_file_component(root, root_fd):
    os.symlink("b", f"{root}/a")
    os.symlink("a", f"{root}/b")
    with pytest.raises(InvalidInput):
        paths.mkdirs_in_root(root_fd, "/a/x")
    open(f"{root}/f", "w").close()
    with pytest.raises(InvalidInput, match="not a directory"):
        paths.mkdirs_in_root(root_fd, "/f/x")
    with pytest.raises(InvalidInput):
        paths.mkdirs_in_root(root_fd, "/f")
    assert sorted(os.listdir(root)) == ["a", "b", "f"]


def test_mkdirs_self_feeding_dangling_links_hit_the_hop_limit(root, root_fd):
    # each link leads through a missing directory (so the kernel stops early with ENOENT,
    # not ELOOP) to the next link: creating one target only uncovers the next
    for i in range(60):
        os.symlink(f"d{i}/../n{i + 1}", f"{root}/n{i}")
    with pytest.raises(InvalidInput, match="symbolic links"):
        paths.mkdirs_in_root(root_fd, "/n0")


# --- ensure_mount_target ------------------------------------------------------------------

def test_mount_target_new_dir_and_file(root, root_fd):
    assert where(paths.ensure_mount_target(root_fd, "/mnt/vol", True)) == f"{root}/mnt/vol"
    fd = paths.ensure_mount_target(root, "/etc/hosts", False)
    try:
        assert os.fstat(fd).st_size == 0 and stat.S_ISREG(os.fstat(fd).st_mode)
        assert os.fstat(fd).st_ino == os.stat(f"{root}/etc/hosts").st_ino
    finally:
        assert where(fd) == f"{root}/etc/hosts"


def test_mount_target_existing(root, root_fd):
    os.makedirs(f"{root}/etc/ssl")
    with open(f"{root}/etc/hosts", "w") as f:
        f.write("keep\n")
    assert where(paths.ensure_mount_target(root_fd, "/etc/hosts", False)) == f"{root}/etc/hosts"
    assert where(paths.ensure_mount_target(root_fd, "/etc/ssl", True)) == f"{root}/etc/ssl"
    with open(f"{root}/etc/hosts") as f:
        assert f.read() == "keep\n"


def test_mount_target_kind_mismatch(root, root_fd):
    os.makedirs(f"{root}/etc/ssl")
    open(f"{root}/etc/hosts", "w").close()
    with pytest.raises(InvalidInput, match="'/etc/ssl' is a directory .* source is a file"):
        paths.ensure_mount_target(root_fd, "/etc/ssl", False)
    with pytest.raises(InvalidInput, match="'/etc/hosts' is a file .* source is a directory"):
        paths.ensure_mount_target(root_fd, "/etc/hosts", True)
    with pytest.raises(InvalidInput):
        paths.ensure_mount_target(root_fd, "/", False)
    # a link to a directory counts as a directory
    os.symlink("/etc/ssl", f"{root}/ssl")
    with pytest.raises(InvalidInput, match="is a directory"):
        paths.ensure_mount_target(root_fd, "/ssl", False)


def test_mount_target_dangling_final_symlink(root, root_fd, tag):
    os.makedirs(f"{root}/etc")
    os.symlink(f"/{tag}/etc/shadow", f"{root}/etc/hosts")
    got = where(paths.ensure_mount_target(root_fd, "/etc/hosts", False))
    assert got == f"{root}/{tag}/etc/shadow"
    assert os.path.islink(f"{root}/etc/hosts")
    assert not os.path.lexists(f"/{tag}")
    # relative, climbing far above the root
    os.symlink(f"../../../../../../../../{tag}-r", f"{root}/etc/resolv.conf")
    got = where(paths.ensure_mount_target(root_fd, "/etc/resolv.conf", False))
    assert got == f"{root}/{tag}-r"
    assert not os.path.lexists(f"/{tag}-r")
    # dangling link for a directory mount
    os.symlink(f"/{tag}-d", f"{root}/data")
    assert where(paths.ensure_mount_target(root_fd, "/data", True)) == f"{root}/{tag}-d"
    assert not os.path.lexists(f"/{tag}-d")


def test_mount_target_link_to_existing_host_file(root, root_fd):
    # /etc/passwd exists on the host: the target must be created in the root, host untouched
    before = os.stat("/etc/passwd")
    os.symlink("/etc/passwd", f"{root}/pw")
    assert where(paths.ensure_mount_target(root_fd, "/pw", False)) == f"{root}/etc/passwd"
    after = os.stat("/etc/passwd")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)


def test_mount_target_intermediate_link_and_loop(root, root_fd, tag):
    os.symlink("/", f"{root}/rootlink")
    os.symlink(f"../../../{tag}", f"{root}/vol")
    got = where(paths.ensure_mount_target(root_fd, "/rootlink/vol/sub/file", False))
    assert got == f"{root}/{tag}/sub/file"
    os.symlink("loop2", f"{root}/loop1")
    os.symlink("loop1", f"{root}/loop2")
    with pytest.raises(InvalidInput):
        paths.ensure_mount_target(root_fd, "/loop1", False)
    with pytest.raises(InvalidInput):
        paths.ensure_mount_target(root_fd, "/loop1/x", True)
    assert not os.path.lexists(f"/{tag}")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind mount")
def test_mount_target_usable_for_bind_mount(root, tmp_path):
    """Bind a file onto a target reached through a hostile link, in a throwaway mount ns."""
    src = tmp_path / "src"
    src.write_text("bound\n")
    os.makedirs(f"{root}/etc")
    os.symlink("/etc/passwd", f"{root}/etc/hosts")  # would hit the host's passwd
    pid = os.fork()
    if pid == 0:  # the namespace and its mounts die with this child
        code = 1
        try:
            from ctrun import libc
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            fd = paths.ensure_mount_target(root, "/etc/hosts", False)
            libc.mount(str(src), paths.fd_path(fd), None, libc.MS_BIND)
            os.close(fd)
            with open(f"{root}/etc/passwd") as f:
                ok_inside = f.read() == "bound\n"
            with open("/etc/passwd") as f:
                ok_host = f.read() != "bound\n"
            code = 0 if ok_inside and ok_host else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.getsize(f"{root}/etc/passwd") == 0  # the bind is gone with the namespace


# --- lookup_command -----------------------------------------------------------------------

def _exe(p, body="#!/bin/sh\n"):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(body)
    os.chmod(p, 0o755)


def test_lookup_through_absolute_link_in_root(root, root_fd):
    _exe(f"{root}/bin/busybox")
    os.symlink("/bin/busybox", f"{root}/bin/sh")
    assert paths.lookup_command(root_fd, "sh", "/usr/bin:/bin") == "/bin/sh"
    assert paths.lookup_command(root, "sh", "/usr/bin:/bin") == "/bin/sh"
    assert where(paths.open_in_root(root_fd, "/bin/sh")) == f"{root}/bin/busybox"
    assert paths.lookup_command(root_fd, "/bin/sh", "") == "/bin/sh"


def test_lookup_never_reaches_host_binaries(root, root_fd):
    assert os.path.exists("/bin/sh")  # the host has one; the root must not find it
    os.makedirs(f"{root}/bin")
    os.symlink("/bin/sh", f"{root}/bin/sh")  # dangling inside the root
    os.symlink("../../../../../../usr/bin/env", f"{root}/bin/env")
    with pytest.raises(CommandNotFound, match="command 'sh' not found in the container's PATH"):
        paths.lookup_command(root_fd, "sh", "/bin")
    with pytest.raises(CommandNotFound):
        paths.lookup_command(root_fd, "env", "/bin")
    with pytest.raises(CommandNotFound, match="'/usr/bin/env'"):
        paths.lookup_command(root_fd, "/usr/bin/env", "/bin")


def test_lookup_order_and_skips(root, root_fd):
    _exe(f"{root}/usr/bin/tool")
    _exe(f"{root}/opt/bin/tool")
    os.makedirs(f"{root}/first/tool")  # a directory is not a command
    open(f"{root}/noexec", "w").close()
    os.makedirs(f"{root}/second")
    open(f"{root}/second/tool", "w").close()  # not executable
    os.symlink("b", f"{root}/a")
    os.symlink("a", f"{root}/b")  # a loop in PATH is skipped, not fatal
    path_env = "/a:/first:/second::.:rel:/opt/bin/:/usr/bin"
    assert paths.lookup_command(root_fd, "tool", path_env) == "/opt/bin/tool"
    with pytest.raises(CommandNotFound, match="check the image or give an absolute path"):
        paths.lookup_command(root_fd, "missing", path_env)
    with pytest.raises(CommandNotFound):
        paths.lookup_command(root_fd, "/noexec", path_env)


def test_lookup_relative_entries_never_use_cwd(root, root_fd):
    _exe(f"{root}/tool")  # only reachable through "" or "." if cwd were "/"
    with pytest.raises(CommandNotFound):
        paths.lookup_command(root_fd, "tool", ":.")


def test_lookup_default_path(root, root_fd):
    _exe(f"{root}/usr/sbin/init")
    assert paths.lookup_command(root_fd, "init", "") == "/usr/sbin/init"
    assert paths.lookup_command(root_fd, "init", None) == "/usr/sbin/init"


def test_lookup_relative_with_slash(root, root_fd):
    _exe(f"{root}/app/run.sh")
    assert paths.lookup_command(root_fd, "./run.sh", "/bin") == "./run.sh"  # left to exec
    assert paths.lookup_command(root_fd, "./run.sh", "/bin", cwd="/app") == "/app/run.sh"
    with pytest.raises(CommandNotFound):
        paths.lookup_command(root_fd, "./run.sh", "/bin", cwd="/")


def test_lookup_empty_command(root_fd):
    with pytest.raises(InvalidInput, match="command is empty"):
        paths.lookup_command(root_fd, "", "/bin")


def test_lookup_in_slash_root_uses_the_process_root():
    got = paths.lookup_command("/", "sh", "/nonexistent:/usr/bin:/bin")
    assert got in ("/usr/bin/sh", "/bin/sh")
    with pytest.raises(CommandNotFound):
        paths.lookup_command("/", "ctrun-no-such-command-" + uuid.uuid4().hex, "/usr/bin:/bin")


def test_workdir_follows_links_that_stay_inside(root, root_fd):
    os.makedirs(f"{root}/srv/app/sub")
    os.symlink("/srv/app", f"{root}/abs")
    os.symlink("app/sub", f"{root}/srv/rel")
    os.symlink("../srv/rel/..", f"{root}/srv/up")
    assert where(paths.open_workdir(root_fd, "/abs/sub")) == f"{root}/srv/app/sub"
    assert where(paths.open_workdir(root_fd, "/srv/rel")) == f"{root}/srv/app/sub"
    # ".." after a link is taken from where the link led, as the kernel does
    assert where(paths.open_workdir(root, "/srv/up")) == f"{root}/srv/app"
    assert where(paths.open_workdir(root_fd, "/")) == root


def test_workdir_refuses_climbing_above_the_root(root, root_fd):
    os.makedirs(f"{root}/a")
    os.symlink("../../..", f"{root}/w")
    os.symlink("../../../etc", f"{root}/a/e")
    for p in ("/w", "/a/e", "/a/../..", "/w/a"):
        with pytest.raises(InvalidInput, match="climbs above the root"):
            paths.open_workdir(root_fd, p)


def test_workdir_refuses_magic_links_loops_and_files(root, root_fd):
    with pytest.raises(InvalidInput, match="magic link"):
        paths.open_workdir("/", "/proc/self/cwd")
    os.symlink("b", f"{root}/a")
    os.symlink("a", f"{root}/b")
    with pytest.raises(InvalidInput, match="symbolic links"):
        paths.open_workdir(root_fd, "/a")
    open(f"{root}/file", "w").close()
    with pytest.raises(InvalidInput, match="not a directory"):
        paths.open_workdir(root_fd, "/file")
    with pytest.raises(FileNotFoundError):
        paths.open_workdir(root_fd, "/missing")
