"""One error hierarchy.  Every message is one lower-case line naming the object and the fix."""


class CtrunError(Exception):
    """Base of every error ctrun reports to a user; exit_code is what the CLI returns."""

    exit_code = 1


class InvalidInput(CtrunError):
    exit_code = 2


class NotFound(CtrunError):
    exit_code = 3


class AlreadyExists(CtrunError):
    exit_code = 4


class Conflict(CtrunError):
    """The object is in the wrong state for the verb (running, stopped, locked...)."""

    exit_code = 5


class HostUnsupported(CtrunError):
    """The host lacks a kernel feature, a controller or a tool the request needs."""

    exit_code = 6


class ContainerFailed(CtrunError):
    """The container's own setup failed (error sent back by its init before exec)."""

    exit_code = 125


class CommandNotFound(CtrunError):
    exit_code = 127
