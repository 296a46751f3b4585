"""What the store's monitor holds while its containers run and no call comes: it outlives
every call, so the code of its one-off work (a launcher's, an exit's record, the warm
server's) runs in its children, ctypes loads only once a container calls sysinfo(2), and it
starts without site's start-up."""

from conftest import _monitor_pids, until
from ctrun import monitor

# loaded by a launcher, the record of an exit (cgroups, config, state and the pathlib it
# takes), the warm server (cli, api), the sysinfo answer (ctypes) or site's start-up (its
# .pth hooks' imports): none at rest
ONE_OFF = {"pathlib", "socket", "ctypes", "ctrun.state", "ctrun.cgroups", "ctrun.config",
           "ctrun.cli", "ctrun.api", "ctrun.server", "ctrun.backends", "ctrun.network",
           "site", "_distutils_hack"}


def _status(store):
    reply = monitor.request(store, {"op": "status"}, spawn=False)
    assert reply and reply.get("ok"), reply
    return reply


def test_the_monitor_keeps_none_of_its_one_off_work_loaded(cli, store):
    cli("image", "build", "busybox", check=True)
    cli("run", "-d", "--name", "up", "--memory", "64M", "busybox", "--", "sleep", "1000",
        check=True)
    cli("run", "-d", "--name", "done", "busybox", "--", "sh", "-c", "exit 7", check=True)
    done = until(lambda: (o := cli.json("inspect", "done"))["state"] == "stopped" and o,
                 what="the exit's record")
    assert (done["exit_code"], done["exit_reason"]) == (7, "exited")
    status = _status(store)
    assert status["pid"] == _monitor_pids(store)[0]
    assert status["running"] == [cli.json("inspect", "up")["pid"]]
    assert not ONE_OFF & set(status["modules"]), sorted(ONE_OFF & set(status["modules"]))
    # a sysinfo(2) call in the container is still answered with its own figures: busybox's
    # free asks it (the answer loads ctypes then)
    out = cli("exec", "up", "--", "free", "-m", check=True).stdout
    assert next(ln.split()[1] for ln in out.splitlines() if ln.startswith("Mem:")) == "64", out
    assert "ctypes" in _status(store)["modules"]
