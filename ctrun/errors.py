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


class HookFailed(ContainerFailed):
    """A runtime-spec hook exited non-zero, could not be run, or outlived its timeout."""


class CommandNotFound(CtrunError):
    exit_code = 127


def quote(value):
    """User input as a message shows it: quoted, repr-style, every control or otherwise
    unprintable character escaped, so an error stays one line and input cannot forge
    output lines (a name ending in a newline, an ANSI escape, a bidi override)."""
    return repr(value if isinstance(value, str) else str(value))


def one_line(text):
    """A message with whatever unprintable characters it holds escaped: the CLI's last
    defence, for a message some code built without quote()."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))
