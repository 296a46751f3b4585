"""VM mode: the same image booted as a virtual machine under QEMU (KVM, or TCG emulation).

kernel.py finds the guest kernel, initramfs.py builds the boot image holding the guest
agent (agent.c), disk.py makes the root disk from the image, accel.py decides KVM or TCG,
qemu.py writes QEMU's command line and speaks QMP, agent.py is the host end of the agent
channel, and machine.py ties them into the verbs the VM backend (ctrun.backends.vm) calls.
"""
