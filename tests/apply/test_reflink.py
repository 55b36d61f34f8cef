"""`apply` with reflinks on a real XFS (reflink=1) on a loop device, and where reflinks cannot go.

Tests that the blocks are really shared afterwards (FIEMAP's SHARED flag, the same physical
extents), the free space grows and is what `apply_plan` reports, the victim keeps its mode, owner
and timestamps, the kernel's own comparison refuses different bytes, a reflink across two
filesystems is refused, ext4 answers "not supported" and changes nothing, and hardlink and delete
work on the same XFS.  The XFS image is made once per module (`mkfs.xfs -m reflink=1`, losetup,
mount with strictatime so any read of a file would show in its atime); the tests skip, with the
reason, where that cannot be done (not root, no mkfs.xfs, a mount refused).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from faultsys import Faulty, entry_of
from treebuilder import Tree, content, flip

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.outcome import Outcome
from dedup_engine.apply.plan import Action, Operation, Plan, Policy, make_plan
from dedup_engine.apply.runner import ApplySummary, apply_plan
from dedup_engine.apply.syscalls import RealSyscalls, fs_type

pytestmark = pytest.mark.usefixtures("deadline")

MiB = 1 << 20
IMAGE_BYTES = 300 * MiB  # the smallest XFS mkfs.xfs makes

#: _IOWR('f', 11, struct fiemap) and the flags used, from linux/fiemap.h.
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
_BATCH = 64


class Extent(NamedTuple):
    logical: int
    physical: int
    length: int
    flags: int


def extents(path: str) -> list[Extent]:
    """The file's extents as FIEMAP reports them (dirty data written back first)."""
    out: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while True:
            head = _FIEMAP.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
            buf = bytearray(head + bytes(_EXTENT.size * _BATCH))
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP.unpack_from(buf)[3]
            batch = []
            for i in range(mapped):
                fields = _EXTENT.unpack_from(buf, _FIEMAP.size + i * _EXTENT.size)
                batch.append(Extent(fields[0], fields[1], fields[2], fields[5]))
            out += batch
            if not batch or batch[-1].flags & FIEMAP_EXTENT_LAST:
                return out
            start = batch[-1].logical + batch[-1].length
    finally:
        os.close(fd)


def shares_all_blocks(victim: str, keep: str) -> bool:
    """Every extent of `victim` is flagged shared and is the same physical range as `keep`'s."""
    mine, theirs = extents(victim), extents(keep)
    same = [e[:3] for e in mine] == [e[:3] for e in theirs]
    return bool(mine) and same and all(e.flags & FIEMAP_EXTENT_SHARED for e in mine)


def free_bytes(path: str) -> int:
    info = os.statvfs(path)
    return info.f_bfree * info.f_frsize


def state(path: str) -> tuple[object, ...]:
    """Everything `apply` could change about a name: identity, metadata, bytes."""
    st = os.lstat(path)
    meta = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return (*meta, Path(path).read_bytes())


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An XFS with reflink=1 on a loop device, mounted for the module; unmounted and detached."""
    if os.geteuid() != 0:
        pytest.skip("needs root to attach a loop device and mount an XFS image")
    for tool in ("mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} to make and mount an XFS image")
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(IMAGE_BYTES)
    made = run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)])
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs -m reflink=1 failed: {made.stderr.strip()}")
    loop = run(["losetup", "--find", "--show", str(image)])
    if loop.returncode != 0:
        pytest.skip(f"losetup --find --show failed: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        mounted = run(["mount", "-t", "xfs", "-o", "strictatime", device, str(mnt)])
        if mounted.returncode != 0:
            pytest.skip(f"mount of the XFS image failed: {mounted.stderr.strip()}")
        try:
            yield str(mnt)
        finally:
            if run(["umount", str(mnt)]).returncode != 0:
                run(["umount", "-l", str(mnt)])
    finally:
        run(["losetup", "-d", device])
        image.unlink()  # 300 MiB (sparse) that pytest's kept temporary directories need not hold


@pytest.fixture
def xtree(xfs_mount: str, request: pytest.FixtureRequest) -> Tree:
    """A fresh tree on the XFS.  Left in place: deleting would free blocks in the background
    (inodegc) while a later test measures the free space."""
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    return Tree(Path(xfs_mount, name))


def find_and_apply(
    roots: list[str], action: Action, options: ScanOptions | None = None
) -> tuple[Plan, ApplySummary]:
    os.sync()  # settle delayed allocation, so st_blocks and the free space are final
    found = find_duplicates(roots, options or ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(action))
    return plan, apply_plan(plan)


# --- on XFS ----------------------------------------------------------------------------------


def test_reflink_shares_the_blocks_and_frees_the_space(xtree: Tree) -> None:
    big, odd, small = content(5 * MiB + 123, "big"), content(3 * MiB - 1, "odd"), content(1000)
    sparse = {0: content(64 << 10, "s0"), 8 * MiB + 7: content(100_000, "s1")}
    for side in ("a", "b"):
        xtree.file(f"{side}/big", big)
        xtree.file(f"{side}/odd", odd)
        xtree.file(f"{side}/small", small)
        xtree.sparse(f"{side}/sparse", 16 * MiB + 3, sparse)
        xtree.file(f"{side}/empty", b"")
    xtree.file("b/deeper/big", big)
    names = ("big", "odd", "small", "sparse", "empty")
    before = {rel: Path(xtree.path(rel)).read_bytes() for rel in ("a/" + n for n in names)}
    keeps = {xtree.path(f"a/{n}") for n in names}
    victims = [xtree.path(r) for r in ("b/big", "b/deeper/big", "b/odd", "b/small", "b/sparse")]
    os.sync()
    for victim in victims:
        assert not any(e.flags & FIEMAP_EXTENT_SHARED for e in extents(victim))
    allocated = sum(os.lstat(v).st_blocks * 512 for v in victims)
    free_before = free_bytes(xtree.root)

    plan, summary = find_and_apply([xtree.path("a"), xtree.path("b")], Action.REFLINK)

    free_after = free_bytes(xtree.root)
    assert sorted(op.victim.path for op in plan.operations) == sorted(victims)
    assert {op.keep.path for op in plan.operations} <= keeps
    assert [r.outcome for r in summary.results] == [Outcome.DONE] * len(victims), summary.results
    for op in plan.operations:
        kst, vst = os.lstat(op.keep.path), os.lstat(op.victim.path)
        assert (vst.st_dev, vst.st_ino) == (op.victim.dev, op.victim.ino)
        assert vst.st_ino != kst.st_ino and vst.st_nlink == 1
        assert Path(op.victim.path).read_bytes() == before["a/" + Path(op.keep.path).name]
        assert shares_all_blocks(op.victim.path, op.keep.path), extents(op.victim.path)
    for side in ("a", "b"):  # empty files are not found by default, so left as they are
        assert Path(xtree.path(f"{side}/empty")).read_bytes() == b""
    assert summary.measured_by == "free space"
    assert free_after > free_before
    # What `apply` measures lies inside our own before/after; most of the victims' blocks went.
    assert allocated // 2 < summary.reclaimed <= free_after - free_before


def test_reflink_keeps_mode_owner_and_timestamps(xtree: Tree) -> None:
    data = content(2 * MiB + 17)
    xtree.file("a/keep", data, mode=0o644)
    victim = xtree.file("b/victim", data)
    os.chown(victim, 1234, 5678)
    os.chmod(victim, 0o6750)  # after chown, which clears set-id bits; the kernel must not
    os.utime(victim, ns=(1_000_000_000_123_456_789, 900_000_000_987_654_321))
    find = find_duplicates([xtree.path("a"), xtree.path("b")], ScanOptions(workers=0))
    plan = make_plan(find.groups, find.roots, Policy(Action.REFLINK))
    seen = os.lstat(victim)  # after find, whose reads set the atime (strictatime)
    assert len(plan.operations) == 1 and plan.operations[0].victim.path == victim

    summary = apply_plan(plan)

    assert summary.results[0].outcome is Outcome.DONE, summary.results[0].message
    after = os.lstat(victim)
    assert stat.S_IMODE(after.st_mode) == 0o6750
    assert (after.st_uid, after.st_gid) == (1234, 5678)
    assert (after.st_atime_ns, after.st_mtime_ns) == (seen.st_atime_ns, seen.st_mtime_ns)
    assert after.st_mtime_ns == 900_000_000_987_654_321
    assert shares_all_blocks(victim, xtree.path("a/keep"))
    assert Path(victim).read_bytes() == data


@pytest.mark.parametrize("where", ["first-byte", "last-byte"])
def test_the_kernel_compares_the_bytes(xtree: Tree, where: str) -> None:
    """Same size, different bytes, and a report that matches every stat: the kernel says no."""
    data = content(MiB + 4095, where)
    other = flip(data, 0 if where == "first-byte" else len(data) - 1)
    keep, victim = xtree.file("keep", data), xtree.file("victim", other)
    os.sync()
    states = {keep: state(keep), victim: state(victim)}
    op = Operation(0, Action.REFLINK, entry_of(victim), entry_of(keep))

    summary = apply_plan(Plan((op,), ()))

    result = summary.results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "differs" in result.message
    assert {p: state(p) for p in states} == states
    assert not any(e.flags & FIEMAP_EXTENT_SHARED for e in extents(victim))


@pytest.mark.parametrize("action", [Action.REFLINK, Action.HARDLINK])
def test_a_link_across_filesystems_is_refused(xtree: Tree, tmp_path: Path, action: Action) -> None:
    """The kept file on ext4 (the first root), the victim on the XFS."""
    data = content(300_000)
    ext = Tree(tmp_path / "ext4")
    keep, victim = ext.file("x", data), xtree.file("x", data)
    assert os.lstat(keep).st_dev != os.lstat(victim).st_dev
    states = {keep: state(keep), victim: state(victim)}

    plan, summary = find_and_apply([ext.root, xtree.root], action)

    assert [(op.keep.path, op.victim.path) for op in plan.operations] == [(keep, victim)]
    result = summary.results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "across filesystems" in result.message
    assert {p: state(p) for p in states} == states


def test_empty_files_found_with_empty_are_done_with_nothing_to_share(xtree: Tree) -> None:
    keep, victim = xtree.file("a/e", b""), xtree.file("b/e", b"")
    states = {keep: state(keep), victim: state(victim)}
    options = ScanOptions(workers=0, empty=True)
    _, summary = find_and_apply([xtree.path("a"), xtree.path("b")], Action.REFLINK, options)
    assert [r.outcome for r in summary.results] == [Outcome.DONE]
    assert {p: state(p) for p in states} == states


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.DELETE])
def test_hardlink_and_delete_on_xfs(xtree: Tree, action: Action) -> None:
    data = content(3 * MiB + 1)
    keep, victim = xtree.file("a/x", data), xtree.file("b/x", data)
    blocks = os.lstat(victim).st_blocks * 512

    _, summary = find_and_apply([xtree.path("a"), xtree.path("b")], action)

    assert [r.outcome for r in summary.results] == [Outcome.DONE], summary.results
    assert summary.measured_by == "st_blocks" and summary.reclaimed == blocks > 0
    assert Path(keep).read_bytes() == data
    if action is Action.HARDLINK:
        assert os.path.samefile(keep, victim) and os.lstat(keep).st_nlink == 2
    else:
        assert not os.path.lexists(victim)
    assert not [n for _, _, names in os.walk(xtree.root) for n in names if n.startswith(".dedup-")]


# --- where reflinks cannot go ----------------------------------------------------------------


def test_reflink_on_ext4_fails_and_changes_nothing(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    if fs_type(tree.root) != "ext4":
        pytest.skip(f"the temporary directory is on {fs_type(tree.root)}, not ext4")
    data = content(200_001)
    keep, victim = tree.file("a/x", data), tree.file("b/x", data)
    states = {keep: state(keep), victim: state(victim)}

    _, summary = find_and_apply([tree.path("a"), tree.path("b")], Action.REFLINK)

    result = summary.results[0]
    assert result.outcome is Outcome.FAILED
    assert "reflink not supported on ext4" in result.message
    assert {p: state(p) for p in states} == states
    assert summary.reclaimed == 0  # only operations that were done are counted


class WriterDuringDedupe(RealSyscalls):
    """The real calls; but just before each dedupe someone else writes 1 MiB to the same
    filesystem, as any other program may while `apply` runs."""

    def __init__(self, scratch: Path) -> None:
        super().__init__()
        self.scratch = scratch

    def dedupe(self, src_fd: int, dst_fd: int, length: int) -> None:
        with self.scratch.open("ab") as f:
            f.write(content(MiB, "other program"))
            os.fsync(f.fileno())
        super().dedupe(src_fd, dst_fd, length)


def test_a_reflink_run_that_did_nothing_reclaimed_nothing(tmp_path: Path) -> None:
    """Free space is measured around each dedupe that worked, not over the whole run."""
    tree = Tree(tmp_path / "tree")
    if fs_type(tree.root) != "ext4":
        pytest.skip(f"the temporary directory is on {fs_type(tree.root)}, not ext4")
    data = content(200_001)
    tree.file("a/x", data)
    tree.file("b/x", data)
    found = find_duplicates([tree.path("a"), tree.path("b")], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.REFLINK))

    summary = apply_plan(plan, syscalls=WriterDuringDedupe(tmp_path / "other-program"))

    assert [r.outcome for r in summary.results] == [Outcome.FAILED]
    assert summary.reclaimed == 0


def test_a_file_larger_than_one_dedupe_call_is_shared_in_steps(
    xtree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel caps a call (XFS: 1 GiB); a smaller step makes the loop run many times."""
    from dedup_engine.apply import syscalls as fsops

    calls = 0
    real_ioctl = fcntl.ioctl

    def counting_ioctl(fd: int, request: int, arg: bytearray) -> object:
        nonlocal calls
        calls += 1
        return real_ioctl(fd, request, arg)

    monkeypatch.setattr(fsops, "DEDUPE_STEP", 256 << 10)
    monkeypatch.setattr(fcntl, "ioctl", counting_ioctl)
    data = content(3 * MiB + 5, "steps")
    xtree.file("a/big", data)
    xtree.file("b/big", data)
    _, summary = find_and_apply([xtree.path("a"), xtree.path("b")], Action.REFLINK)
    assert [r.outcome for r in summary.results] == [Outcome.DONE]
    assert calls == 13  # 12 whole steps of 256 KiB and the 5-byte tail
    assert shares_all_blocks(xtree.path("b/big"), xtree.path("a/big"))
    assert Path(xtree.path("b/big")).read_bytes() == data


def test_a_write_just_after_the_dedupe_keeps_its_mtime(xtree: Tree) -> None:
    """A write that lands right after FIDEDUPERANGE keeps its mtime: put back, the file would
    hold new bytes under its old size and mtime, and backups and the next find would take it
    for unchanged.  A writer holding the file open means no lease, so no restoring."""
    data = content(1 * MiB, "w")
    keep, victim = xtree.file("a/x", data), xtree.file("b/x", data)
    found = find_duplicates([xtree.root], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.REFLINK))
    writer = os.open(victim, os.O_WRONLY)  # a program that holds it open
    before = os.lstat(victim)

    class WriteAfterDedupe(Faulty):
        def dedupe(self, src_fd: int, dst_fd: int, length: int) -> None:
            super().dedupe(src_fd, dst_fd, length)
            time.sleep(0.01)  # past the coarse clock's tick, so the write moves the mtime
            os.pwrite(writer, b"written after the dedupe", 0)

    try:
        summary = apply_plan(plan, syscalls=WriteAfterDedupe())
    finally:
        os.close(writer)
    assert [r.outcome for r in summary.results] == [Outcome.DONE]
    assert Path(victim).read_bytes().startswith(b"written after the dedupe")
    assert os.lstat(victim).st_mtime_ns > before.st_mtime_ns  # the write shows
    assert Path(keep).read_bytes() == data
