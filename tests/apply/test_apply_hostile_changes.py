"""`apply` against another user or a changing system: each hostile change refused, with the
state on disk after.

An overlay shows one file under two devices; a name left absent while its link is made could be
taken; a symlink may be planted at `--to` itself; a script could be written through a symlink,
and its `mv` sent into a directory made at its temporary name; directory permissions and ACLs are
part of "who can read this path"; a moved copy must not land where more users reach it;
`--resume` completes an operation only with apply's checks, without a traceback, and never waits
on a FIFO; `--to ""` is no directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultsys import Crash, Faulty, entry_of, lease_breaking, leftovers
from incli import invoke
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.journal import FileJournal
from dedup_engine.apply.outcome import Outcome
from dedup_engine.apply.plan import Action, Operation, Plan, Policy, make_plan
from dedup_engine.apply.resume import open_journal, resume
from dedup_engine.apply.runner import apply_plan
from dedup_engine.apply.settle import Settlement
from dedup_engine.report.formats.json import to_json_dict

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]
DATA = content(6000, "attack")


def dedup(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    command = [*DEDUP, *map(str, args)]
    return subprocess.run(command, capture_output=True, timeout=120, check=False)


def plan_of(roots: list[str], action: Action, **policy: object) -> Plan:
    found = find_duplicates(roots, ScanOptions(workers=0))
    return make_plan(found.groups, found.roots, Policy(action, **policy))  # type: ignore[arg-type]


def one_line(proc: subprocess.CompletedProcess[bytes]) -> bool:
    return proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


# -- one file under two devices ------------------------------------------------------------------


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount an overlay")
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    (tmp_path / "lower" / "x").write_bytes(DATA)
    options = (
        f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
    )
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(tmp_path / "merged")],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an overlay here: {mounted.stderr.decode().strip()}")
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", str(tmp_path / "merged")], check=False)


@pytest.mark.parametrize("action", [Action.DELETE, Action.SYMLINK])
def test_a_file_seen_through_an_overlay_is_not_deleted_as_its_own_copy(
    overlay: Path, action: Action
) -> None:
    """The merged view shows the lower file under another st_dev: find groups it with itself,
    and deleting "the copy" would delete the only one."""
    merged, lower = str(overlay / "merged"), str(overlay / "lower")
    plan = plan_of([merged, lower], action)
    assert [op.victim.path for op in plan.operations] == [os.path.join(lower, "x")]
    result = apply_plan(plan).results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "overlay can show one file on two" in result.message
    assert (overlay / "lower" / "x").read_bytes() == DATA
    assert not (overlay / "lower" / "x").is_symlink()


# -- the copy's name is never absent while it is replaced ------------------------------------------


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.SYMLINK])
def test_the_copys_name_is_never_absent_while_it_is_replaced(
    tmp_path: Path, action: Action
) -> None:
    """A name free between setting the copy aside and linking could be taken by another user
    (in a sticky shared directory), and a reader would see ENOENT."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    victim = tree.file("v", DATA)
    spy = Faulty()
    absent: list[str] = []
    spy.hook = lambda name, number: None if os.path.lexists(victim) else absent.append(name)
    summary = apply_plan(plan_of([tree.root], action), syscalls=spy)
    assert [r.outcome for r in summary.results] == [Outcome.DONE]
    assert "exchange" in spy.calls and absent == []
    assert Path(victim).read_bytes() == DATA and leftovers(tree.root) == []


# -- --to is taken as given ----------------------------------------------------------------------


def test_a_symlink_planted_at_to_itself_is_refused(tmp_path: Path) -> None:
    """A symlink another user plants at --to in a shared directory would send root's moves into
    a directory of the attacker's choice, if it were followed."""
    tree = Tree(tmp_path / "data")
    tree.file("k", DATA)
    tree.file("evil.sh", DATA)
    shared, target = tmp_path / "shared", tmp_path / "root-only"
    shared.mkdir()
    target.mkdir(mode=0o700)
    os.symlink(target, shared / "dupes")
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    proc = dedup("apply", report, "--action", "move", "--to", shared / "dupes")
    assert proc.returncode == 2 and one_line(proc)
    assert b"is a symlink" in proc.stderr
    assert os.listdir(target) == [] and Path(tree.path("evil.sh")).exists()


def test_an_empty_to_is_refused(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "data")
    tree.file("k", DATA)
    tree.file("v", DATA)
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    proc = subprocess.run(
        [*DEDUP, "apply", str(report), "--action", "move", "--to", ""],
        cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and one_line(proc) and b"--to is empty" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["data", "report.json"]


def test_moved_copies_go_to_private_directories(tmp_path: Path) -> None:
    """Directories made under --to with 0777 less the umask would make a copy moved out of a
    0700 directory readable by everyone.  They are 700: the kept copy stays where its users
    reach it."""
    tree = Tree(tmp_path / "data")
    tree.file("keep/private/k", DATA)  # as private as the copy: only that lets it be moved
    tree.file("private/deeper/s", DATA)
    for rel in ("keep/private", "private"):
        tree.p(rel).chmod(0o700)
    dest = tmp_path / "dest"
    plan = plan_of([tree.root], Action.MOVE, move_to=str(dest))
    assert apply_plan(plan).clean
    for made in (dest, dest / "private", dest / "private" / "deeper"):
        assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700
    assert (dest / "private" / "deeper" / "s").read_bytes() == DATA


@pytest.mark.parametrize("case", ["public --to", "another user's --to"])
def test_a_move_into_a_more_open_or_foreign_destination_is_refused(public: Path, case: str) -> None:
    """A copy from a private directory moved into an existing public --to (or one another
    user made in a shared directory) would become readable, and theirs to take."""
    tree = Tree(public / "data")
    tree.file("keep/private/k", DATA)
    tree.file("private/s", DATA)
    for rel in ("keep/private", "private"):
        tree.p(rel).chmod(0o700)
    dest = public / "dest"
    dest.mkdir(mode=0o755)
    dest.chmod(0o755)
    if case == "another user's --to":
        dest.chmod(0o777)
        os.chown(dest, 65534, 65534)
    (dest / "private").mkdir()  # already there, public
    (dest / "private").chmod(0o755)
    plan = plan_of([tree.root], Action.MOVE, move_to=str(dest), keep_paths=("*/keep/*",))
    assert [op.victim.path for op in plan.operations] == [tree.path("private/s")]
    result = apply_plan(plan).results[0]
    assert result.outcome is Outcome.SKIPPED, result.message
    expected = "belongs to another user" if "another" in case else "reachable by users who"
    assert expected in result.message
    assert Path(tree.path("private/s")).read_bytes() == DATA
    assert os.listdir(dest / "private") == []


# -- scripts -------------------------------------------------------------------------------------


def test_a_script_is_never_written_through_a_symlink_nor_over_a_file(tmp_path: Path) -> None:
    """Opened with open("wb") and chmod 755, a symlink planted at the script's name would
    overwrite (and make executable) a file of root's, and a file another user owned would stay
    theirs to edit between the review and `sh FILE`."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("v", DATA)
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    precious = tmp_path / "precious"
    precious.write_bytes(b"root's")
    precious.chmod(0o600)
    (tmp_path / "link.sh").symlink_to(precious)
    (tmp_path / "theirs.sh").write_bytes(b"#!/bin/sh\n")
    for name in ("link.sh", "theirs.sh"):
        proc = dedup("apply", report, "--action", "delete", "--script", tmp_path / name)
        assert proc.returncode == 2 and one_line(proc), proc.stderr
    assert precious.read_bytes() == b"root's" and stat.S_IMODE(precious.stat().st_mode) == 0o600
    assert (tmp_path / "theirs.sh").read_bytes() == b"#!/bin/sh\n"


def test_a_script_does_not_move_a_copy_into_a_directory_made_at_its_temporary_name(
    tmp_path: Path,
) -> None:
    """`mv -n V TMP` would move V into a directory another user made at TMP between the
    review and the run, and the script would still exit 0."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    victim = tree.file("v", DATA)
    report, script = tmp_path / "report.json", tmp_path / "plan.sh"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    for action in ("hardlink", "delete"):
        script.unlink(missing_ok=True)
        assert dedup("apply", report, "--action", action, "--script", script).returncode == 0
        (temp,) = re.findall(r"'([^']*\.dedup-[0-9a-f]{8}\.tmp)'", script.read_text())
        os.mkdir(temp)  # made by someone else just before the step runs
        ran = subprocess.run(["sh", script], capture_output=True, timeout=60, check=False)
        assert ran.returncode == 1, ran.stderr
        assert Path(victim).read_bytes() == DATA and os.listdir(temp) == []
        os.rmdir(temp)


# -- who can read a path: directories and ACLs ---------------------------------------------------


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.SYMLINK, Action.DELETE])
def test_a_copy_others_can_reach_is_not_given_up_for_one_in_a_private_directory(
    public: Path, action: Action
) -> None:
    """Equal owner and mode, but the kept file in a 0700 directory: a symlink to it, or a
    delete of the public copy, would take the public path away from other users; a hard link
    would let them write (0666) into the private copy."""
    tree = Tree(public / "t")
    keep = tree.file("a-private/f", DATA, mode=0o666)
    victim = tree.file("b-public/f", DATA, mode=0o666)
    tree.p("a-private").chmod(0o700)
    before = entry_of(victim)
    result = apply_plan(plan_of([tree.root], action)).results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "reachable by other users than the kept file" in result.message
    assert entry_of(victim) == before and not os.path.samefile(keep, victim)


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory everyone can reach (pytest's own are root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="dedup-public-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _acl(path: str, uid: int, perm: int) -> None:
    """A POSIX ACL giving `uid` `perm` (the xattr's binary form; setfacl may be missing)."""
    mode = os.stat(path).st_mode
    entries = [(0x01, (mode >> 6) & 7, 0xFFFFFFFF), (0x02, perm, uid),
               (0x04, (mode >> 3) & 7, 0xFFFFFFFF), (0x10, perm | ((mode >> 3) & 7), 0xFFFFFFFF),
               (0x20, mode & 7, 0xFFFFFFFF)]  # fmt: skip
    data = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, "system.posix_acl_access", data)


def test_a_copy_with_an_acl_is_not_given_up_for_one_without(tmp_path: Path) -> None:
    """b/f lets the user nobody read it through an ACL; hard-linked to a/f, it would not."""
    tree = Tree(tmp_path / "t")
    keep = tree.file("a/f", DATA, mode=0o640)
    victim = tree.file("b/f", DATA, mode=0o640)
    try:
        _acl(victim, 65534, 4)
    except OSError as exc:
        pytest.skip(f"cannot set an ACL here: {exc}")
    plan = plan_of([tree.root], Action.HARDLINK)  # the ACL's mask leaves the mode as it was
    assert len(plan.operations) == 1
    result = apply_plan(plan).results[0]
    assert result.outcome is Outcome.SKIPPED, result.message
    assert "differs in ACL or security attributes" in result.message
    assert not os.path.samefile(keep, victim)
    assert os.getxattr(victim, "system.posix_acl_access")


# -- resume checks as apply does -------------------------------------------------------------------


def test_resume_does_not_complete_over_a_file_held_open_for_writing(tmp_path: Path) -> None:
    """A program holds the set-aside copy open for writing: deleting the copy would send that
    program's later writes to a file with no name."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    victim = tree.file("sub/v", DATA)
    plan = plan_of([tree.root], Action.HARDLINK)
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    swapped = Faulty(_first_call(tmp_path, "exchange"), crash="after")  # not yet committed
    with pytest.raises(Crash):
        apply_plan(plan, syscalls=swapped, journal=journal)
    journal.close()
    (temp,) = leftovers(tree.root)
    writer = os.open(temp, os.O_WRONLY)  # holds the copy, under its temporary name
    try:
        settled = resume(journal.path).settled
        os.pwrite(writer, b"LATE", 0)
    finally:
        os.close(writer)
    assert [s.settlement for s in settled] == [Settlement.PUT_BACK]
    assert "open for writing by another process" in settled[0].message
    assert Path(victim).read_bytes() == b"LATE" + DATA[4:]
    assert leftovers(tree.root) == []


def _first_call(tmp_path: Path, name: str) -> int:
    probe = Tree(tmp_path / f"probe-{name}")
    probe.file("k", DATA)
    probe.file("sub/v", DATA)
    spy = Faulty()
    apply_plan(plan_of([probe.root], Action.HARDLINK), syscalls=spy)
    return spy.calls.index(name) + 1


def test_resume_of_a_move_whose_directory_is_gone_needs_you_without_a_traceback(
    tmp_path: Path,
) -> None:
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("sub/v", DATA)
    dest = tmp_path / "dest"
    plan = plan_of([tree.root], Action.MOVE, move_to=str(dest))
    journal = _started(tmp_path, plan.operations[0])
    shutil.rmtree(tree.path("sub"))
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", dest / "sub")
    proc = dedup("apply", "--resume", journal.path)
    assert b"Traceback" not in proc.stderr
    assert b"NEEDS YOU" in proc.stderr and b"is a symlink" in proc.stderr


def _started(tmp_path: Path, op: Operation) -> FileJournal:
    """The journal of a run killed just after `op` (a move: no temporary name) started."""
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    journal.begin(0, op, None)
    journal.start(0, op.keep)
    journal.close()
    return journal


def test_resume_of_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """Opened without O_NONBLOCK, a FIFO would hang the command, with Ctrl-C deferred."""
    fifo = tmp_path / "journal.jsonl"
    os.mkfifo(fifo, 0o600)
    proc = dedup("apply", "--resume", fifo)
    assert proc.returncode == 2 and one_line(proc) and b"not a regular file" in proc.stderr


# -- who reaches a directory, a writer at the swap, what replaced the kept file --------------------


def test_directory_permissions_are_read_from_the_directories_acted_in(public: Path) -> None:
    """Directories looked up again by name (or cached) would let a user who can swap a public
    decoy in under the private directory's name pass the check, and then write into root's
    private file through the public copy's new hard link."""
    tree = Tree(public / "t")
    keep = tree.file("a-private/f", DATA, mode=0o666)
    victim = tree.file("b-public/f", DATA, mode=0o666)
    tree.p("a-private").chmod(0o700)
    spy = Faulty()

    def decoy(name: str, number: int) -> None:
        if name == "open" and spy.calls.count("open") == 2:  # both directories are open
            os.rename(tree.path("a-private"), tree.path("a-private-real"))
            os.mkdir(tree.path("a-private"), 0o755)

    spy.hook = decoy
    result = apply_plan(plan_of([tree.root], Action.HARDLINK), syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED, result.message
    assert "reachable by other users than the kept file" in result.message
    assert not os.path.samefile(tree.path("a-private-real/f"), victim)
    assert Path(keep).parent.name == "a-private" and os.listdir(tree.path("a-private")) == []


def test_a_directory_group_gets_the_group_bits_not_the_others(public: Path) -> None:
    """A 0705 directory of group staff is not open to all: Linux gives a member of staff the
    group bits (none).  A symlink into it would take the public copy away from them."""
    tree = Tree(public / "t")
    tree.file("nostaff/r", DATA)
    victim = tree.file("pub/r", DATA)
    tree.p("nostaff").chmod(0o705)
    os.chown(tree.path("nostaff"), 0, 50)
    plan = plan_of([tree.root], Action.SYMLINK, keep_paths=("*/nostaff/*",))
    assert [op.victim.path for op in plan.operations] == [victim]
    result = apply_plan(plan).results[0]
    assert result.outcome is Outcome.SKIPPED, result.message
    assert "reachable by other users" in result.message
    assert not os.path.islink(victim)


def test_a_writer_opening_the_copys_name_once_the_link_is_in_gets_what_it_opened(
    tmp_path: Path,
) -> None:
    """Once the link is swapped in, a program opening the copy's name for writing gets the kept
    file and breaks its lease: undoing the run then would leave the write in the kept file, and
    the copy back under the name without it."""
    tree = Tree(tmp_path / "t")
    keep = tree.file("k", DATA)
    victim = tree.file("v", DATA)
    writers: list[subprocess.Popen[bytes]] = []

    class OpenAfterSwap(Faulty):
        def exchange(self, a_at: int, a: str, b_at: int, b: str) -> None:
            super().exchange(a_at, a, b_at, b)
            if writers:
                return
            code = (
                "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.pwrite(fd, b'NEW', 0)"
            )
            writers.append(subprocess.Popen([sys.executable, "-c", code, victim]))
            while not lease_breaking():
                assert writers[0].poll() is None, "the writer got in without breaking the lease"

    summary = apply_plan(plan_of([tree.root], Action.HARDLINK), syscalls=OpenAfterSwap())
    assert writers[0].wait(timeout=30) == 0
    assert [r.outcome for r in summary.results] == [Outcome.DONE], summary.results
    assert os.path.samefile(keep, victim)
    assert Path(victim).read_bytes() == b"NEW" + DATA[3:]  # where the writer will look for it
    assert leftovers(tree.root) == []


def test_a_link_made_to_whatever_replaced_the_kept_file_is_removed(tmp_path: Path) -> None:
    """The kept name swapped for a symlink just before the link is made leaves a hard link to
    that symlink under the temporary name: it must go, not stay unreported."""
    tree = Tree(tmp_path / "t")
    keep = tree.file("k", DATA)
    tree.file("v", DATA)
    spy = Faulty()

    def swap(name: str, number: int) -> None:
        if name == "link" and not os.path.islink(keep):
            os.rename(keep, keep + ".moved")
            os.symlink("/etc/hostname", keep)

    spy.hook = swap
    result = apply_plan(plan_of([tree.root], Action.HARDLINK), syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED, result.message
    assert leftovers(tree.root) == []
    assert Path(tree.path("v")).read_bytes() == DATA


def test_where_names_cannot_be_swapped_a_link_to_what_replaced_the_kept_file_is_undone(
    tmp_path: Path,
) -> None:
    """The copy is set aside and the link made at its name; the kept name swapped for another
    file just before, the link names that file.  Putting the copy back removes that link: it is
    ours, and the other file keeps the kept path's name."""
    tree = Tree(tmp_path / "t")
    keep = tree.file("k", DATA)
    victim = tree.file("v", DATA)
    spy = Faulty()

    def no_exchange_then_swap(name: str, number: int) -> None:
        if name == "exchange":
            raise OSError(errno.EINVAL, "no RENAME_EXCHANGE here (a test's choice)")
        if name == "link" and spy.calls.count("link") == 2:  # the link at the copy's name
            os.rename(keep, keep + ".old")
            Path(keep).write_bytes(b"an impostor")

    spy.hook = no_exchange_then_swap
    result = apply_plan(plan_of([tree.root], Action.HARDLINK), syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED, result.message
    assert result.message == f"{victim!r} is not the kept file after linking"
    assert Path(victim).read_bytes() == DATA and os.lstat(victim).st_nlink == 1
    assert Path(keep).read_bytes() == b"an impostor" and os.lstat(keep).st_nlink == 1
    assert leftovers(tree.root) == []


def test_resume_to_a_full_or_closed_stdout_is_exit_5(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("v", DATA)
    report, journal = tmp_path / "report.json", tmp_path / "j.jsonl"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    assert dedup("apply", report, "--action", "delete", "--journal", journal).returncode == 0
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [*DEDUP, "apply", "--resume", str(journal)],
            stdout=full, stderr=subprocess.PIPE, timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode == 5 and b"Traceback" not in proc.stderr
    closed = subprocess.run(
        f'{sys.executable} -m dedup_engine apply --resume "{journal}" >&-',
        shell=True, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert closed.returncode == 5 and b"nothing was touched" in closed.stderr


def test_resume_finishes_a_move_stopped_between_its_link_and_unlink(tmp_path: Path) -> None:
    """Where renameat2 is missing a move is a link then an unlink; stopped between the two,
    resume called it untouched, then failed on its own link for ever."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    victim = tree.file("sub/v", DATA)
    dest = tmp_path / "dest"
    plan = plan_of([tree.root], Action.MOVE, move_to=str(dest))
    (op,) = plan.operations
    journal = _started(tmp_path, op)
    assert op.target is not None
    os.makedirs(os.path.dirname(op.target))
    os.link(victim, op.target)  # the link made, the unlink not
    settled = resume(journal.path).settled
    assert [s.settlement for s in settled] == [Settlement.COMPLETED]
    assert not os.path.lexists(victim) and Path(op.target).read_bytes() == DATA


def test_directories_above_both_paths_decide_reach_for_both(public: Path) -> None:
    """Only the directories below the first one two paths share can make their reach differ;
    where they do, a shared directory above that already stops everyone makes it moot."""
    tree = Tree(public / "t")
    for rel, mode in (("open/a", 0o755), ("open/b", 0o755), ("shut/a", 0o755), ("shut/b", 0o700)):
        tree.file(f"{rel}/f", DATA)
        tree.p(rel).chmod(mode)
    tree.p("shut").chmod(0o700)
    for parent, expected in (("open", Outcome.DONE), ("shut", Outcome.DONE)):
        plan = plan_of([tree.path(f"{parent}/a"), tree.path(f"{parent}/b")], Action.HARDLINK)
        assert [r.outcome for r in apply_plan(plan).results] == [expected], parent
    tree.file("mixed/a/f", DATA)
    tree.file("mixed/b/f", DATA)
    tree.p("mixed/b").chmod(0o700)
    plan = plan_of([tree.path("mixed/a"), tree.path("mixed/b")], Action.HARDLINK)
    result = apply_plan(plan).results[0]
    assert result.outcome is Outcome.SKIPPED and "reachable by other users" in result.message


# -- resume and rollback at the edges --------------------------------------------------------------


def _killed_after_the_swap(tmp_path: Path, copies: int = 1) -> tuple[Tree, Plan, str]:
    """A hardlink run killed once its first link is swapped in, before the commit."""
    tree = Tree(tmp_path / "t")
    tree.file("a/k", DATA)
    for number in range(copies):
        tree.file(f"b/v{number}", DATA)
    found = find_duplicates([tree.path("a"), tree.path("b")], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.HARDLINK))
    data = json.dumps(to_json_dict(found, ScanOptions(workers=0), "test")).encode()
    (tmp_path / "report.json").write_bytes(data)
    journal = open_journal(
        str(tmp_path / "j.jsonl"), data, str(tmp_path / "report.json"), Policy(Action.HARDLINK),
        verify=True, operations=len(plan.operations),
    )  # fmt: skip
    probe = Faulty()
    apply_plan(plan_of([_probe_tree(tmp_path).root], Action.HARDLINK), syscalls=probe)
    with pytest.raises(Crash):
        apply_plan(
            plan, syscalls=Faulty(probe.calls.index("exchange") + 1, crash="after"), journal=journal
        )
    journal.close()
    return tree, plan, journal.path


def _probe_tree(tmp_path: Path) -> Tree:
    probe = Tree(tmp_path / "probe")
    probe.file("a/k", DATA)
    probe.file("b/v0", DATA)
    return probe


def test_resume_never_removes_the_kept_files_last_name(tmp_path: Path) -> None:
    """Killed with our link swapped in, then the copy's name (now the kept file) appended to
    and the kept path removed: resume cannot compare, and puts the copy back, but must not
    unlink with it the only name of the appended bytes."""
    tree, _, journal = _killed_after_the_swap(tmp_path)
    with open(tree.path("b/v0"), "ab") as f:
        f.write(b"APPENDED")
    os.unlink(tree.path("a/k"))
    settled = resume(journal).settled
    assert [s.settlement for s in settled] == [Settlement.NEEDS_YOU], settled
    assert "the kept file's only name" in settled[0].message
    survivors = [Path(os.fsdecode(p)).read_bytes() for p in leftovers(tree.root)]
    assert survivors == [DATA + b"APPENDED"]
    assert tree.read("b/v0") == DATA  # the copy is back at its name


def test_resume_puts_back_a_copy_whose_lease_fails_for_a_reason_it_does_not_know(
    tmp_path: Path,
) -> None:
    """Only "no lease can be had here" lets the pair go on unleased, in `--resume` as in
    `apply`: any other failure refuses, and the copy goes back to its name."""
    tree, _, journal = _killed_after_the_swap(tmp_path)

    class LeaseFails(Faulty):
        def lease(self, fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    resumed = resume(journal, LeaseFails())
    assert [s.settlement for s in resumed.settled] == [Settlement.PUT_BACK]
    assert "cannot take a lease: Input/output error (EIO)" in resumed.settled[0].message
    assert tree.read("b/v0") == DATA
    assert not os.path.samefile(tree.path("a/k"), tree.path("b/v0"))
    assert leftovers(tree.root) == []


def test_a_second_resume_expects_what_the_first_one_left(tmp_path: Path) -> None:
    """The ctimes a resume's settling changes are journaled: a second resume would otherwise
    take them for someone else's change and skip the rest of the group."""
    tree, plan, journal = _killed_after_the_swap(tmp_path, copies=2)
    first = resume(journal, should_stop=lambda: True)  # settles, then is interrupted
    assert [s.settlement for s in first.settled] == [Settlement.COMPLETED]
    assert first.summary is not None and first.summary.interrupted
    second = resume(journal)
    assert second.summary is not None
    assert [r.outcome for r in second.summary.results] == [Outcome.DONE, Outcome.DONE]
    assert all(os.path.samefile(tree.path("a/k"), op.victim.path) for op in plan.operations)


def test_relative_and_double_slash_paths_still_resume(tmp_path: Path) -> None:
    """A relative --journal with a report from stdin, or --to //x, must put paths in the
    journal that its own reader accepts, or the run could never be finished."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("sub/v", DATA)
    report = dedup("find", tree.root, "-f", "json", "-q").stdout
    proc = subprocess.run(
        [*DEDUP, "apply", "-", "--action", "move", "--to", "/" + str(tmp_path / "dest"),
         "--journal", "rel.jsonl"],
        input=report, cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    again = subprocess.run(
        [*DEDUP, "apply", "--resume", "rel.jsonl"], cwd=tmp_path, capture_output=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert b"move: 1 done" in again.stdout
    assert (tmp_path / "dest" / "sub" / "v").read_bytes() == DATA


def test_a_report_copy_that_cannot_be_written_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup_engine.apply import resume as resume_module
    from dedup_engine.apply.journal import JournalWriteError

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)  # the report copy is the first write
    with pytest.raises(JournalWriteError, match="No space left"):
        resume_module.open_journal(
            str(tmp_path / "j.jsonl"), b"{}", "-", Policy(Action.DELETE), verify=True,
            operations=0,
        )  # fmt: skip
    assert os.listdir(tmp_path) == []


def test_a_journal_that_cannot_be_written_during_resume_is_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup_engine.apply import resume as resume_module
    from dedup_engine.apply.journal import JournalWriteError

    def full(path: str, **kwargs: object) -> None:
        raise JournalWriteError(f"cannot write journal {path!r}: No space left on device")

    monkeypatch.setattr(resume_module, "resume", full)  # the command loads it when it resumes
    code, _, err = invoke("apply", "--resume", str(tmp_path / "j.jsonl"))
    assert code == 4 and f"Finish the run with --resume {tmp_path / 'j.jsonl'}".encode() in err


def test_a_path_1400_directories_deep_is_acted_on(tmp_path: Path) -> None:
    """Walking up by "../../.." would outgrow PATH_MAX 1366 levels up."""
    tree = Tree(tmp_path / "t")
    deep = tree.root
    for _ in range(1400):  # one level at a time: os.makedirs recurses
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    Path(deep, "v").write_bytes(DATA)
    tree.file("k", DATA)
    try:
        summary = apply_plan(plan_of([tree.root], Action.HARDLINK))
        assert [r.outcome for r in summary.results] == [Outcome.DONE], summary.results
        assert os.path.samefile(os.path.join(deep, "v"), tree.path("k"))
    finally:  # so deep that shutil.rmtree would recurse past Python's limit
        os.unlink(os.path.join(deep, "v"))
        while deep != tree.root:
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_resume_calls_a_move_done_when_someone_reused_the_old_name(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    victim = tree.file("sub/v", DATA)
    (op,) = plan_of([tree.root], Action.MOVE, move_to=str(tmp_path / "dest")).operations
    journal = _started(tmp_path, op)
    assert op.target is not None
    os.makedirs(os.path.dirname(op.target))
    os.rename(victim, op.target)
    Path(victim).write_bytes(b"a new file someone made")
    assert [s.settlement for s in resume(journal.path).settled] == [Settlement.COMPLETED]
    assert Path(victim).read_bytes() == b"a new file someone made"


def test_a_rollback_finishes_when_our_link_is_already_gone(tmp_path: Path) -> None:
    """Setting aside (no swap on this filesystem), the link made, then removed by someone
    before the commit fails: the name is free to put the copy back, and the rollback
    succeeds."""
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    victim = tree.file("v", DATA)

    class NoSwap(Faulty):
        def exchange(self, a_at: int, a: str, b_at: int, b: str) -> None:
            self.calls.append("exchange")
            raise OSError(errno.EINVAL, "cannot swap here")

    spy = NoSwap()

    def gone(name: str, number: int) -> None:
        # The first unlink removes our link that could not be swapped in; the second is the
        # commit: our link at the copy's name is removed by someone, and the commit fails.
        if name == "unlink" and spy.calls.count("unlink") == 2:
            os.unlink(victim)
            raise OSError(errno.EIO, "injected")

    spy.hook = gone
    result = apply_plan(plan_of([tree.root], Action.HARDLINK), syscalls=spy).results[0]
    assert result.outcome is Outcome.FAILED, result.message
    assert Path(victim).read_bytes() == DATA and leftovers(tree.root) == []
