"""What a file of each format looks like inside, for the `realistic` and `backup` synthetic
trees: its magic and header bytes as the format's specification lays them out, the boilerplate
files of one kind share, zero-filled regions and holes.

A file is planned as a `Spec`, a tuple of pieces (`Literal` bytes, `Noise` drawn from a key,
`Zeros` written, a `Hole` left unwritten, `Lines` of text drawn from a key), and rendered by
`render`.  Each format is one builder in `FORMATS`, which makes a spec of a given size from the
planner's choices: files of one format share their magic and the header fields they have in
common (a camera's quantisation tables, a project's licence header, a log's line prefixes), and
differ where the format puts what differs (a timestamp, the payload).  The sources of the shares
and rates are in `docs/benchmarks.md` ("The realistic and backup trees").
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import blake3

#: Render in slices of this size, so a large file never needs its size in memory.
SLICE = 1 << 22


class Literal(NamedTuple):
    data: bytes


class Noise(NamedTuple):
    """Incompressible bytes, the same for the same key: `blake3(seed:key)` from `start` on."""

    key: int
    length: int
    start: int = 0


class Zeros(NamedTuple):
    length: int


class Hole(NamedTuple):
    """Zeros never written: the file is sparse there (where the filesystem allows)."""

    length: int


class Lines(NamedTuple):
    """Text lines of a `style` (`_LINE_STYLES`), drawn from `key`: a log's, or source code's."""

    key: int
    length: int
    style: str


Piece = Literal | Noise | Zeros | Hole | Lines
Spec = tuple[Piece, ...]


def spec_size(spec: Spec) -> int:
    return sum(len(p.data) if isinstance(p, Literal) else p.length for p in spec)


def fit(pieces: list[Piece], size: int) -> Spec:
    """The pieces cut or padded (with noise from the last noise piece's key) to `size` bytes:
    a header is what a format starts with, whatever the size the file was drawn."""
    out: list[Piece] = []
    left = size
    for piece in pieces:
        if left <= 0:
            break
        length = len(piece.data) if isinstance(piece, Literal) else piece.length
        if length <= left:
            out.append(piece)
            left -= length
        elif isinstance(piece, Literal):
            out.append(Literal(piece.data[:left]))
            left = 0
        else:
            out.append(piece._replace(length=left))
            left = 0
    if left > 0:
        key = next((p.key for p in reversed(pieces) if isinstance(p, Noise)), 0)
        out.append(Noise(key, left, start=1 << 40))
    return tuple(out)


# Rendering.


def render(fd: int, seed: int, spec: Spec, patches: Sequence[tuple[int, int]] = ()) -> bytes:
    """Write the spec's bytes to `fd` (a new, empty file), each (offset, mask) of `patches`
    XORed in (a near-copy); the BLAKE3 digest of the content."""
    digest = blake3.blake3()
    offset = 0
    for piece in spec:
        end = offset + (len(piece.data) if isinstance(piece, Literal) else piece.length)
        hit = [(o - offset, m) for o, m in patches if offset <= o < end]
        if isinstance(piece, Hole) and not hit:  # nothing written: the file reads zeros there
            _zeros_digest(digest, piece.length)
            offset = end
            continue
        os.lseek(fd, offset, os.SEEK_SET)
        at = 0
        for data in _bytes_of(seed, piece):
            here = [(o - at, m) for o, m in hit if at <= o < at + len(data)]
            if here:
                data = bytearray(data)
                for o, m in here:
                    data[o] ^= m
            digest.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            at += len(data)
        offset = end
    os.ftruncate(fd, offset)  # a hole at the end still counts in the size
    return digest.digest()


def spec_bytes(seed: int, spec: Spec, patches: Sequence[tuple[int, int]] = ()) -> bytes:
    """The whole content at once (small files; tests)."""
    data = bytearray(b"".join(data for piece in spec for data in _bytes_of(seed, piece)))
    for offset, mask in patches:
        data[offset] ^= mask
    return bytes(data)


def _zeros_digest(digest: blake3.blake3, length: int) -> None:
    block = bytes(min(length, SLICE))
    while length > 0:
        take = min(length, SLICE)
        digest.update(block[:take])
        length -= take


def _bytes_of(seed: int, piece: Piece) -> Iterator[bytes | bytearray]:
    if isinstance(piece, Literal):
        yield piece.data
    elif isinstance(piece, Noise):
        xof = blake3.blake3(f"{seed}:{piece.key}".encode())
        for start in range(0, piece.length, SLICE):
            yield xof.digest(length=min(SLICE, piece.length - start), seek=piece.start + start)
    elif isinstance(piece, Zeros | Hole):
        for start in range(0, piece.length, SLICE):
            yield bytes(min(SLICE, piece.length - start))
    else:
        yield _lines(seed, piece)


def _lines(seed: int, piece: Lines) -> bytes:
    rng = random.Random(f"{seed}:{piece.key}")
    make = _LINE_STYLES[piece.style]
    out: list[bytes] = []
    total = 0
    while total < piece.length:
        line = make(rng)
        out.append(line)
        total += len(line)
    return b"".join(out)[: piece.length]


_WORDS = (
    b"request user session cache worker queue index block chunk table record page commit "
    b"flush open close read write retry timeout connect accept parse load store update delete"
).split()
_LEVELS = (b"INFO", b"INFO", b"INFO", b"DEBUG", b"WARN", b"ERROR")
_IDENT = (b"value", b"count", b"buffer", b"result", b"index", b"offset", b"length", b"node")


def _log_line(rng: random.Random) -> bytes:
    # A fixed-width timestamp and level, then a component: the prefix every line shares.
    return b"2026-11-%02dT%02d:%02d:%02d.%03dZ %-5s [%s.%s] %s %s id=%08x\n" % (
        rng.randint(1, 28),
        rng.randint(0, 23),
        rng.randint(0, 59),
        rng.randint(0, 59),
        rng.randint(0, 999),
        rng.choice(_LEVELS),
        rng.choice(_WORDS),
        rng.choice(_WORDS),
        rng.choice(_WORDS),
        rng.choice(_WORDS),
        rng.getrandbits(32),
    )


def _code_line(rng: random.Random) -> bytes:
    indent = b"    " * rng.randint(0, 3)
    a, b = rng.choice(_IDENT), rng.choice(_IDENT)
    return indent + rng.choice(
        (
            b"%s = %s + %d;\n" % (a, b, rng.randint(0, 99)),
            b"if (%s > %s) {\n" % (a, b),
            b"}\n",
            b"return %s;\n" % a,
            b"/* %s the %s */\n" % (rng.choice(_WORDS), rng.choice(_WORDS)),
            b"\n",
        )
    )


def _prose_line(rng: random.Random) -> bytes:
    return b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + b".\n"


_LINE_STYLES: dict[str, Callable[[random.Random], bytes]] = {
    "log": _log_line,
    "code": _code_line,
    "prose": _prose_line,
}


# Formats: each builds a spec of `size` bytes from the planner's choices.


@dataclass(frozen=True, slots=True)
class Choices:
    """What a format's builder may draw on: the planner's Random, fresh content keys, and the
    shared parts a kind of file has (a camera, a project, a program), numbered by `family`."""

    rng: random.Random
    key: Callable[[], int]
    family: int


Builder = Callable[[Choices, int], Spec]


def _jpeg(c: Choices, size: int) -> Spec:
    """SOI, then an APP1 Exif segment (a TIFF header and an IFD of Make, Model and DateTime: the
    camera's are its family's, the time the photo's own), then the camera's quantisation
    tables, then entropy-coded data, then EOI."""
    make = b"Maker%d\0" % (c.family % 7)
    model = b"Model %d\0" % c.family
    when = b"2026:%02d:%02d %02d:%02d:%02d\0" % _moment(c.rng)
    values = make + model + when
    entries = b""
    offset = 8 + 2 + 3 * 12 + 4  # after the TIFF header, the count, three entries, next-IFD
    for tag, value in ((0x010F, make), (0x0110, model), (0x0132, when)):
        entries += struct.pack(">HHII", tag, 2, len(value), offset)
        offset += len(value)
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 3) + entries + bytes(4) + values
    app1 = b"Exif\0\0" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    tables = Noise(1_000_000 + c.family, 130)  # two DQT tables: one camera, one quality
    body: list[Piece] = [
        Literal(b"\xff\xd8" + segment + b"\xff\xdb\x00\x84"),
        tables,
        Literal(b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"),
        Noise(c.key(), max(0, size - 2)),
    ]
    if size < 2:
        return fit(body, size)
    return (*fit(body, size - 2), Literal(b"\xff\xd9"))


def _moment(rng: random.Random) -> tuple[int, int, int, int, int]:
    """A moment of the year a header records: month, day, hour, minute, second."""
    return (
        rng.randint(1, 12),
        rng.randint(1, 28),
        rng.randint(0, 23),
        rng.randint(0, 59),
        rng.randint(0, 59),
    )


def _png(c: Choices, size: int) -> Spec:
    """The PNG signature, an IHDR chunk (width, height, 8-bit RGBA), an IDAT chunk of the rest,
    an IEND chunk."""
    width, height = c.rng.choice((16, 32, 48, 64, 128, 256)), c.rng.choice((16, 32, 64, 128))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    tail = _chunk(b"IEND", b"")
    data = max(0, size - len(head) - len(tail) - 12)
    body: list[Piece] = [
        Literal(head + struct.pack(">I", data) + b"IDAT"),
        Noise(c.key(), data + 4),
    ]
    return (*fit(body, max(0, size - len(tail))), *fit([Literal(tail)], min(size, len(tail))))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zip(c: Choices, size: int) -> Spec:
    """An OOXML document: a ZIP whose first entry is `[Content_Types].xml` (its local header
    and deflated bytes the same for one producing program, the family), the other entries'
    data, and a central directory and end record at the end."""
    name = b"[Content_Types].xml"
    first = Noise(2_000_000 + c.family % 13, 300 + c.family % 13 * 7)
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 6, 8, 0x6000, 0x5A21, c.family, first.length, 1200, 19, 0
    )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 9, 9, 700, max(0, size - 722), 0)
    central: list[Piece] = [Noise(c.key(), 700), Literal(end)]
    body: list[Piece] = [Literal(local + name), first, Noise(c.key(), max(0, size))]
    return (*fit(body, max(0, size - 722)), *fit(central, min(size, 722)))


def _pdf(c: Choices, size: int) -> Spec:
    """`%PDF-1.7`, the binary-comment line, a catalog and an info dictionary with the
    producer (the family) and the creation date, the content streams, an xref table and a
    trailer ending in `%%EOF`."""
    when = b"D:2026%02d%02d%02d%02d%02dZ" % _moment(c.rng)
    start = (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
    )
    info = b"4 0 obj\n<< /Producer (Producer %d) /CreationDate (%s) >>\nendobj\n" % (c.family, when)
    stream = b"5 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % size
    head = start + info + stream
    tail = b"\nendstream\nendobj\nxref\n0 6\n0000000000 65535 f \ntrailer\n<< /Size 6 >>\n%%EOF\n"
    body: list[Piece] = [Literal(head), Noise(c.key(), size)]
    return (*fit(body, max(0, size - len(tail))), *fit([Literal(tail)], min(size, len(tail))))


def _elf(c: Choices, size: int) -> Spec:
    """A 64-bit little-endian ELF shared object for x86-64 (its header, then program
    headers), code, the dynamic symbol names a program's libraries share, and the zeros that
    pad its sections to 4 KiB pages."""
    header = b"\x7fELF\x02\x01\x01\x00" + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 3, 0x3E, 1, 0x1040, 64, size, 0, 64, 56, 9, 64, 30, 29)
    program = Noise(3_000_000 + c.family % 5, 9 * 56)
    symbols = Literal(b"\0".join(b"__%s_%s" % (a, b) for a in _WORDS[:12] for b in _IDENT) + b"\0")
    text = max(0, size // 2)
    pad = (-(len(header) + program.length + text)) % 4096
    body: list[Piece] = [Literal(header), program, Noise(c.key(), text), Zeros(pad), symbols]
    return fit(body, size)


def _gzip(c: Choices, size: int) -> Spec:
    """The gzip member header (magic, deflate, no flags, the mtime of the compressed file,
    Unix), then deflated data (its CRC-32 and size trailer drawn with it)."""
    mtime = struct.pack("<I", 1_790_000_000 + c.rng.randint(0, 10_000_000))
    head = b"\x1f\x8b\x08\x00" + mtime + b"\x00\x03"
    body: list[Piece] = [Literal(head), Noise(c.key(), size)]
    return fit(body, size)


def _sqlite(c: Choices, size: int) -> Spec:
    """A SQLite database: the 100-byte header (`SQLite format 3\\0`, 4096-byte pages, the
    change counter, the page count), the schema page its program writes (the family), then
    table pages: a leaf header, cells at the page's end, and free space zeroed between."""
    page = 4096
    pages = max(1, -(-size // page))
    counter = c.rng.randint(1, 6)
    header = b"SQLite format 3\0" + struct.pack(">HBBBBBBIIIIIIIIIIII", page, 1, 1, 0, 64, 32, 32,
        counter, pages, 0, 0, 4, 4, 0, 0, 1, 0, 0, 0) + bytes(20) + struct.pack(">II",
        counter, 3045000)  # fmt: skip
    schema = Noise(4_000_000 + c.family % 9, page - len(header) - 12)
    body: list[Piece] = [Literal(header), Literal(b"\x0d" + bytes(11)), schema]
    for _ in range(pages - 1):
        used = c.rng.randint(200, page - 16)
        body += [Literal(b"\x0d" + bytes(7)), Zeros(page - 8 - used), Noise(c.key(), used)]
    return fit(body, size)


def _log(c: Choices, size: int) -> Spec:
    return fit([Lines(c.key(), size, "log")], size)


def _source(c: Choices, size: int) -> Spec:
    """A source file: its project's licence header (the family's), then code."""
    header = _licence(c.family)
    return fit([Literal(header), Lines(c.key(), size, "code")], size)


def _licence(project: int) -> bytes:
    rng = random.Random(f"licence:{project}")
    lines = [
        b"/*",
        b" * Copyright (c) %d Project %d contributors." % (2010 + project % 15, project),
    ]
    lines += [b" * " + _prose_line(rng).rstrip() for _ in range(8 + project % 10)]
    return b"\n".join([*lines, b" */", b""])


def _text(c: Choices, size: int) -> Spec:
    """A small text file: boilerplate its kind shares (a README's, a config's), then prose."""
    rng = random.Random(f"boilerplate:{c.family % 11}")
    shared = b"".join(_prose_line(rng) for _ in range(3 + c.family % 11 // 3))
    return fit([Literal(shared), Lines(c.key(), size, "prose")], size)


def _binary(c: Choices, size: int) -> Spec:
    return fit([Noise(c.key(), size)], size)


def _sparse(c: Choices, size: int) -> Spec:
    """A preallocated image (a virtual disk, a download): a header, then holes with a few
    written extents."""
    body: list[Piece] = [Noise(c.key(), 4096)]
    left = size - 4096
    while left > 0:
        hole = min(left, c.rng.choice((1, 4, 16, 64)) * 65536)
        body.append(Hole(hole))
        left -= hole
        if left > 0:
            data = min(left, 4096 * c.rng.randint(1, 8))
            body.append(Noise(c.key(), data))
            left -= data
    return fit(body, size)


@dataclass(frozen=True, slots=True)
class Format:
    """A kind of file: its extension, how its files are built, and how many families (cameras,
    projects, programs) share parts of their files."""

    extension: str
    build: Builder
    families: int
    #: The least size a file of it is drawn at: its header whole.
    least: int = 0


FORMATS: dict[str, Format] = {
    "jpeg": Format("jpg", _jpeg, 12, 400),
    "png": Format("png", _png, 1, 70),
    "zip": Format("docx", _zip, 13, 1100),
    "pdf": Format("pdf", _pdf, 8, 400),
    "elf": Format("so", _elf, 5, 8192),
    "gzip": Format("gz", _gzip, 1, 32),
    "sqlite": Format("sqlite", _sqlite, 9, 4096),
    "log": Format("log", _log, 1),
    "source": Format("c", _source, 40, 0),
    "text": Format("txt", _text, 30),
    "binary": Format("dat", _binary, 1),
    "sparse": Format("img", _sparse, 1, 65536),
}
