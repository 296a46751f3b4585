"""ctrun-oci's command line, parsed as runc's clients write it (no argparse: it is on the
path of every verb a client calls)."""

import pytest

from ctrun.errors import InvalidInput
from ctrun.oci.cli import parse, usage


def test_the_forms_clients_send():
    a = parse(["--root", "/r", "--log", "/l", "--log-format=json", "exec", "--process", "p",
               "--detach", "--pid-file", "x", "--tty", "--console-socket", "/s", "ID"])
    assert (a.root, a.log, a.log_format, a.verb, a.process, a.detach, a.pid_file, a.tty,
            a.console_socket, a.id, a.command) == \
        ("/r", "/l", "json", "exec", "p", True, "x", True, "/s", "ID", [])
    a = parse(["--systemd-cgroup", "create", "-b", "/b", "--preserve-fds", "2", "ID"])
    assert (a.systemd_cgroup, a.bundle, a.preserve_fds, a.id) == (True, "/b", 2, "ID")
    a = parse(["-root", "/x", "kill", "--all", "ID", "9"])    # runc's single-dash long form
    assert (a.root, a.all, a.signal) == ("/x", True, "9")


def test_exec_keeps_the_commands_own_options_and_defaults_hold():
    a = parse(["exec", "-e", "A=1", "--env", "B=2", "ID", "ls", "-l", "--color"])
    assert a.env == ["A=1", "B=2"] and a.command == ["ls", "-l", "--color"]
    assert parse(["exec", "ID", "--", "sh"]).command == ["sh"]
    a = parse(["kill", "ID"])
    assert (a.signal, a.all, a.log_format) == ("SIGTERM", False, "text")
    assert parse(["list"]).format == "table" and parse(["events", "ID"]).interval == "5s"


@pytest.mark.parametrize("argv, words", [
    (["bogus"], "unknown command 'bogus'"),
    (["kill"], "kill needs a container ID"),
    (["create", "--nope", "x"], "unknown option '--nope'"),
    (["list", "--format", "xml"], "'xml' is not one of table, json"),
    (["create", "--bundle"], "option --bundle needs a value"),
    (["create", "--preserve-fds", "two", "x"], "'two' is not a number"),
    (["state", "a", "b"], "unexpected argument 'b'"),
])
def test_bad_command_lines_are_one_line_errors(argv, words):
    with pytest.raises(InvalidInput) as e:
        parse(argv)
    assert words in str(e.value) and "--help" in str(e.value) and "\n" not in str(e.value)


def test_help_comes_from_the_same_tables():
    assert parse(["--help"]).help and parse(["exec", "--help"]).help
    assert "--console-socket" in usage("exec") and "checkpoint" not in usage()
    assert all(v in usage() for v in ("create", "start", "delete", "features"))


def test_every_verb_is_one_row_of_the_table(monkeypatch):
    """Parser, --help and dispatch read the same row: a verb's handler is called with the
    parsed arguments."""
    from ctrun.oci import cli, verbs
    assert all(callable(row[3]) for row in cli.VERBS.values())
    called = []

    class Fake:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return lambda *args: called.append((name, *args))

    monkeypatch.setattr(verbs, "Runtime", Fake)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    # a cold light verb starts its root's warm server (ctrun.oci.serving): not here
    monkeypatch.setenv("CTRUN_SERVER", "off")
    assert cli.main(["kill", "ID", "9"]) == 0 and called == [("kill", "ID", "9", False)]
    assert cli.main(["delete", "-f", "ID"]) == 0 and called[-1] == ("delete", "ID", True)
