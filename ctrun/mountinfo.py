"""/proc/<pid>/mountinfo: one line per mount in the reader's mount namespace.

    61 25 0:52 / /mnt/my\\040data rw,nosuid shared:9 master:2 - tmpfs scratch rw,size=64k
    id par dev root point      options  optional fields  - type source super options

Six fixed fields, then zero or more optional fields (propagation) ended by a lone "-",
then three more.  The kernel writes a space, tab, newline and backslash inside a path or
name as \\040, \\011, \\012 and \\134, so fields are exactly the runs between single spaces
(a mount with an empty source shows two spaces in a row, hence no split()).

Imports nothing: this is read on the container start path.
"""

_OCTAL = "01234567"


class Mount:
    """One mount.  Fields are strings as the kernel writes them, with root, point, fstype
    and source decoded; options and superopts stay raw (comma-separated, and a decoded
    \\054 in an option's value would read as a separator)."""

    __slots__ = ("mount_id", "parent_id", "dev", "root", "point", "options", "optional",
                 "fstype", "source", "superopts")

    def __init__(self, fields, sep):
        (self.mount_id, self.parent_id, self.dev, root, point, self.options) = fields[:6]
        self.root, self.point = unescape(root), unescape(point)
        self.optional = tuple(fields[6:sep])
        self.fstype, self.source = unescape(fields[sep + 1]), unescape(fields[sep + 2])
        self.superopts = fields[sep + 3]

    def __repr__(self):
        return "Mount(" + ", ".join(f"{a}={getattr(self, a)!r}" for a in self.__slots__) + ")"


def unescape(field):
    """A field with the kernel's octal escapes (\\040 for a space) decoded; a backslash not
    followed by three octal digits is kept as it is."""
    if "\\" not in field:
        return field
    parts = field.split("\\")
    out = [parts[0]]
    for p in parts[1:]:
        if len(p) >= 3 and p[0] in _OCTAL and p[1] in _OCTAL and p[2] in _OCTAL:
            out.append(chr(int(p[:3], 8)) + p[3:])
        else:
            out.append("\\" + p)
    return "".join(out)


def parse(lines):
    """A Mount for each line (an open mountinfo file, or its text's splitlines()).  A line
    that is no mount record (no "-" after the six fixed fields, or fewer than three fields
    after it) is skipped."""
    for line in lines:
        fields = line.rstrip("\n").split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) >= sep + 4:
            yield Mount(fields, sep)
