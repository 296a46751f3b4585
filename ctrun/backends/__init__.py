"""The backends: what a container's process is (an init in namespaces, or QEMU), chosen once
from the container's recorded mode by for_mode; the lifecycle (ctrun.api) calls no other.

The monitor hand-off stays in the lifecycle rather than in a backend: the monitor's
launcher calls a backend's launch, so a backend that called the monitor would close an
import circle.  There is no backend destroy: all a backend makes lives in the container
directory or its cgroup, which the lifecycle removes the same way for both."""

MODES = ("container", "vm")


def for_mode(mode):
    """The backend class of a container whose config records `mode`."""
    if mode == "vm":
        from .vm import VMBackend
        return VMBackend
    from .container import ContainerBackend
    return ContainerBackend


def for_create(vm):
    """The backend a new container gets from the front end's --vm flag."""
    return for_mode("vm" if vm else "container")


def create_options(mode):
    """The create keywords that choose `mode`'s backend (the inverse of for_create)."""
    return {"vm": mode == "vm"}
