"""Showing values to people: a path as one printable, unambiguous line, a size in binary units.

The text format, the dry run and the command line's summaries all print through these, so a name
and a size read the same wherever they appear.
"""

from __future__ import annotations


def printable(path: str) -> str:
    """A path safe to print on a terminal, one line, and unambiguous: a backslash is doubled,
    an undecodable byte is `\\xNN` (always 80-ff), an ASCII control character `\\n`, `\\t`, `\\r`
    or `\\xNN` (below 80), any other character that does not print `\\uNNNN` or `\\UNNNNNNNN`.
    So a newline in a name and a backslash followed by `n` print differently."""
    if path.isprintable() and "\\" not in path:
        return path
    out = []
    for ch in path:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch < "\x80":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        elif ch <= "\uffff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def human_size(n: int) -> str:
    """`n` bytes in binary units: whole bytes below 1 KiB, one decimal above, TiB at most.

    The unit is the largest power of 1024 that `n` reaches, read off its bit length: the text
    report prints two sizes for every group."""
    if n < 1024:
        return f"{n} B"
    power = min((n.bit_length() - 1) // 10, 4)
    return f"{n / (1 << 10 * power):.1f} {_UNITS[power]}"


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
