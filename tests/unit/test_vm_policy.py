"""VM-mode policy without QEMU: module order, the init's settings, QEMU's command line."""

import subprocess

import pytest

from ctrun.errors import HostUnsupported, InvalidInput
from ctrun.vm import initramfs, machine, qemu


def test_modules_come_after_their_dependencies(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko "
        "kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n")
    order = initramfs.module_order(tmp_path, ["virtio_net", "virtio_rng"])
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtio_net.ko.xz")
    assert names.index("failover.ko") < names.index("net_failover.ko") < names.index("virtio_net.ko.xz")
    assert names[-1] == "virtio-rng.ko" and len(names) == len(set(names))
    with pytest.raises(HostUnsupported, match="virtio_blk"):
        initramfs.module_order(tmp_path, ["virtio_blk"])
    # an optional module comes along where the kernel has it, and is no error where not
    order = initramfs.module_order(tmp_path, ["virtio_ring"], optional=["autofs4", "virtio_rng"])
    assert [p.rsplit("/", 1)[1] for p in order] == ["virtio_ring.ko", "virtio.ko", "virtio-rng.ko"]


def test_settings_survive_hostile_strings():
    conf = {"name": "v", "hostname": "h", "argv": ["/bin/sh", "-c", "echo '$HOME' \"x\"; `id`"],
            "resolv": "nameserver 10.0.0.1\n"}
    text = initramfs.settings(conf, {"ip": "10.0.0.2", "prefix": 24, "gateway": "10.0.0.1"})
    out = subprocess.run(["sh", "-c", text + 'eval "set -- $CTRUN_CMD"; printf "%s\\n" "$@"; '
                          'echo "$CTRUN_IP"; printf "$CTRUN_RESOLV"'],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["/bin/sh", "-c", "echo '$HOME' \"x\"; `id`", "10.0.0.2/24",
                                "nameserver 10.0.0.1"]


def test_qemu_argv_follows_the_accelerator_and_vhost(monkeypatch):
    monkeypatch.setattr(qemu.os.path, "exists", lambda p: False)
    a = qemu.argv("tcg", "/k", "/i", 256, 2, disk="d.qcow2", tap_fd=5, mac="02:42:0a:00:00:02")
    joined = " ".join(a)
    assert "-accel tcg,tb-size=" in joined and "-cpu max" in joined
    assert "tap,id=net0,fd=5" in joined and "vhost=on" not in joined
    assert joined.count("virtserialport") == qemu.PORTS
    monkeypatch.setattr(qemu.os.path, "exists", lambda p: p == "/dev/vhost-net")
    a = " ".join(qemu.argv("kvm", "/k", "/i", 256, 1, tap_fd=5, mac="02:42:0a:00:00:02"))
    assert "vhost=on" in a and "-cpu host" in a and "tsc_early_khz" not in a


@pytest.mark.parametrize("memory,cpus,accel,msg", [
    ("64M", None, "auto", "below"), (None, "0", "auto", "vCPU"), (None, "1.5", "auto", "vCPU"),
    (None, None, "xen", "--accel")])
def test_bad_vm_options(memory, cpus, accel, msg):
    with pytest.raises(InvalidInput, match=msg):
        machine.options(memory, cpus, accel)


def test_vm_options_defaults():
    assert machine.options() == {"memory": 256 << 20, "cpus": 1, "accel": "auto"}


def test_vsock_replaces_the_serial_ports():
    a = " ".join(qemu.argv("kvm", "/k", "/i", 256, 1, vsock_cid=1234))
    assert "vhost-vsock-device,guest-cid=1234" in a and "virtserialport" not in a
