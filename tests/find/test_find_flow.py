"""How groups flow through the stages: bounded queues and tasks, stages closed in order, and the
spinning disks' lock directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from treebuilder import Tree, brute_groups, content, groups_of

from dedup_engine import Progress, ScanOptions, Stage, find_duplicates
from dedup_engine.find import hashstep, pipeline, pool
from dedup_engine.find.pipeline import AHEAD_BATCHES
from dedup_engine.find.readers import lock_dir
from dedup_engine.model import DuplicateGroup


def test_groups_sent_straight_to_the_full_stage_wait_in_a_bounded_queue(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only the tail window on and every file below its minimum size, the size groups go
    straight to the full stage: they are fed as it works, not all at once."""
    for n in range(3000):
        tree.file(f"d{n % 7}/f{n}", content(200 + n % 40, seed=str(n % 1500)))
    most = 0
    count_in = hashstep.FullStep._count_in

    def watch(self: hashstep.FullStep, files: int) -> None:
        nonlocal most
        count_in(self, files)
        most = max(most, self.queued)

    monkeypatch.setattr(hashstep.FullStep, "_count_in", watch)
    options = ScanOptions(workers=2, stages=("tail",), tail_min_size=1 << 20)
    result = find_duplicates(tree.root, options)
    assert groups_of(result) == brute_groups(tree.root)
    # Two batches of the two workers, and the group that went over: 40 sizes, 75 files each.
    bound = AHEAD_BATCHES * hashstep.BATCH_FILES * 2 + 75
    assert 0 < most <= bound


@pytest.mark.usefixtures("deadline")
@pytest.mark.parametrize("workers", [0, 2])
def test_stages_fed_with_small_batches_give_the_same_groups(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Batches of a few files, so groups wait in every stage at once, each a part batch."""
    monkeypatch.setattr(hashstep, "BATCH_FILES", 4)
    for n in range(240):
        kind = n % 3  # read whole by the head; on to the full stage; on to the tail
        size = (3_000, 30_000, 90_000)[kind] + n % 5
        tree.file(f"d{n % 11}/f{n}", content(size, seed=f"{kind}-{n % 5}-{n % 2}"))
    result = find_duplicates(tree.root, ScanOptions(workers=workers))
    assert groups_of(result) == brute_groups(tree.root)


@pytest.mark.usefixtures("deadline")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_size_group_larger_than_a_batch_goes_to_its_owners_in_batch_sized_tasks(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A batch holds whole groups, so one size group of many files is one batch; its owners
    still get it, and its names are asked of them, in tasks of a batch's files at most."""
    monkeypatch.setattr(hashstep, "BATCH_FILES", 16)
    for n in range(300):  # one size group of 300 files: 30 groups of 10 copies
        tree.file(f"d{n % 7}/f{n}", content(50, seed=str(n % 30)))
    rows: list[int] = []  # of each task that has rows

    def watching(submit: Callable[..., int]) -> Callable[..., int]:
        def watch(self: object, task: object, *args: object) -> int:
            rows.append(len(getattr(task, "rows", ())))
            return submit(self, task, *args)

        return watch

    for cls in (pool.InlinePool, pool.ProcessPool):
        monkeypatch.setattr(cls, "submit", watching(cls.submit))
    result = find_duplicates(tree.root, ScanOptions(workers=workers))
    assert groups_of(result) == brute_groups(tree.root)
    assert len(result.groups) == 30
    assert sum(rows) >= 2 * 300  # every file hashed, then named
    assert max(rows) <= 16 * max(1, workers)  # `StepContext.batch_files`


def test_more_size_groups_are_fed_while_no_stage_holds_a_whole_batch() -> None:
    """Two batches' worth of files waiting in three stages, none of them a whole batch: the
    run must feed more, or with nothing out it would wait for ever."""
    run = pipeline._Run.__new__(pipeline._Run)
    run.steps = SimpleNamespace(batch_files=1024)  # type: ignore[assignment]
    short = [SimpleNamespace(queued=q, ready=False) for q in (1000, 900, 500)]
    assert not run._fed_enough(short)  # type: ignore[arg-type]
    whole = [SimpleNamespace(queued=q, ready=r) for q, r in ((1200, True), (900, False))]
    assert run._fed_enough(whole)  # type: ignore[arg-type]


def test_no_group_comes_after_the_last_stage_is_finished(tree: Tree) -> None:
    """A window's stage is finished only once the groups it read whole are re-checked too."""
    for n in range(400):
        tree.file(f"d{n % 9}/f{n}", content(100 + n % 50, seed=str(n % 200)))
    tree.file("big/a", content(70_000))
    tree.file("big/b", content(70_000))
    events: list[object] = []

    def on_group(group: DuplicateGroup) -> None:
        events.append(group)

    def progress(event: Progress) -> None:
        if event.finished:
            events.append(event.stage)

    find_duplicates(tree.root, ScanOptions(workers=2), progress=progress, on_group=on_group)
    assert events[-1] is Stage.FULL
    assert sum(isinstance(e, DuplicateGroup) for e in events) == len(brute_groups(tree.root))


def test_the_lock_directory_is_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = lock_dir()
    assert made == str(tmp_path / "dedup-engine")
    st = os.lstat(made)
    assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700
    assert lock_dir() == made  # found again by the next run


@pytest.mark.parametrize("planted", ["symlink", "open to others"])
def test_a_lock_directory_planted_by_someone_else_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if planted == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        (tmp_path / "dedup-engine").symlink_to(tmp_path / "elsewhere")
    else:
        (tmp_path / "dedup-engine").mkdir()
        os.chmod(tmp_path / "dedup-engine", 0o777)
    assert lock_dir() is None
