"""What a run may look at and how it reads: the validated options of `find_duplicates`.

Validation lives here so that every bad option is refused before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from dedup_engine.globs import pattern_problem

#: Head window.  4 KiB is one page: the cheapest read the kernel serves, and it separates the
#: unrelated same-size files of typical trees as well as larger windows do (docs/architecture.md).
DEFAULT_HEAD = 4096
#: Tail window; catches files that share a header (archives, images of one camera, logs).
DEFAULT_TAIL = 4096
#: Files up to this size are read whole in the head stage, so they need one open in all, not three.
DEFAULT_WHOLE = 16384
#: Smaller files skip the tail stage and go straight to the full hash: below this, reading them
#: whole costs about what another open for the tail does.
DEFAULT_TAIL_MIN = 64 * 1024
#: Read chunk of the full stage: big enough that BLAKE3 runs at full speed, small enough that the
#: buffers stay in L2 (measured: 128 KiB reads hash at 2.7 GB/s here, 256 KiB ones as low as 1.5).
DEFAULT_CHUNK = 128 * 1024
#: With `--sample N`, files above this size are compared on N windows of `chunk_size` spread over
#: them, not in full: big enough that only files whose full read is a real cost are sampled.
DEFAULT_SAMPLE_ABOVE = 1 << 30
#: Windows a sampled file is compared on: the first and last at least, at most a number that keeps
#: a sample well below a full read of the smallest file sampled.
MIN_SAMPLES, MAX_SAMPLES = 2, 1024


#: Worker processes per usable CPU, at most.  More than one per CPU pays off where reads wait on
#: the device (a cold disk: 8 workers on 2 CPUs ran twice as fast as 2); many more only fork and
#: wait, and `-j 10000` would fork for minutes.
WORKERS_PER_CPU = 8
#: Reads in flight on one device, at most: a thread each, and no disk queue is deeper.
MAX_IO_DEPTH = 1024
#: Descriptors the parent holds per worker (`pool.ProcessPool`): the task pipe's write end, the
#: result pipe's read end, and multiprocessing's two ends of the pipe that tells the worker's exit.
FDS_PER_WORKER = 4
#: Descriptors kept for everything else in the parent: stdio, the selector, the pipes of the
#: worker being started, the interpreter's own.
RESERVED_FDS = 32


class OptionsError(ValueError):
    """A bad option or root; raised before any work starts."""


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Options of a run.  All defaults are what `dedup find` uses with no flags.

    hidden: names starting with "." are included by default, like jdupes, fdupes and rdfind do, so a
    comparison between tools sees the same files and an audit of a disk misses nothing.
    """

    follow_links: bool = False
    one_file_system: bool = False
    max_depth: int | None = None
    #: Globs in the one dialect of `dedup_engine.globs`.
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hidden: bool = True
    min_size: int = 1
    max_size: int | None = None
    empty: bool = False
    hard_links: bool = False
    workers: int | None = None
    head_window: int = DEFAULT_HEAD
    tail_window: int = DEFAULT_TAIL
    whole_threshold: int = DEFAULT_WHOLE
    tail_min_size: int = DEFAULT_TAIL_MIN
    chunk_size: int = DEFAULT_CHUNK
    stages: tuple[str, ...] = ("head", "tail")
    #: Reads in flight per device, over every worker; None: the device's own (`find.device`).
    io_depth: int | None = None
    #: Where the digest cache lives (`find.cache`); None: no cache, every file is read.
    cache_dir: str | None = None
    #: Report only groups whose files lie under two roots or more (`find.groups.RootRule`).
    isolate: bool = False
    #: Reference roots, as given: searched like roots, but their files are never acted on, and
    #: a group is reported only with a file under one of them and one outside them all.
    reference: tuple[str, ...] = ()
    #: Also report duplicate directories (`find.dirgroups`), from the file groups.
    dirs: bool = False
    #: Files above `sample_above` bytes are compared on this many windows spread over them, not
    #: in full (0: never); their groups are marked sampled (`model.Verified`).
    sample: int = 0
    sample_above: int = DEFAULT_SAMPLE_ABOVE
    #: Run the search on a Dask cluster (`find.cluster`): a scheduler's address, or "local:N".
    cluster: str | None = None
    #: `--root-on`: (workers, directory) of each root that only some of the cluster's workers
    #: hold (a disk of their host), as given; `find.cluster` says which workers a name matches.
    root_on: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        self._check_limits()
        self._check_windows()
        self._check_patterns()
        self._check_root_on()

    def _check_limits(self) -> None:
        if self.max_depth is not None and self.max_depth < 0:
            raise OptionsError(f"--max-depth must be 0 or more, not {self.max_depth}")
        if self.min_size < 0:
            raise OptionsError(f"--min-size must be 0 or more, not {self.min_size}")
        if self.max_size is not None and self.max_size < max(self.min_size, 0):
            raise OptionsError(f"--max-size {self.max_size} is below --min-size {self.min_size}")
        if self.cache_dir is not None and not os.path.isabs(self.cache_dir):
            raise OptionsError(f"the cache directory must be absolute, not {self.cache_dir!r}")
        if self.reference and self.follow_links:
            raise OptionsError(
                "--reference with -L: a link would show a reference file under a path outside "
                "the reference roots, which dedup apply could not keep; search without -L"
            )
        if self.sample and not MIN_SAMPLES <= self.sample <= MAX_SAMPLES:
            raise OptionsError(
                f"--sample must be {MIN_SAMPLES} to {MAX_SAMPLES} windows, not {self.sample}"
            )
        if self.sample_above < 1:
            raise OptionsError(f"--sample-above must be at least 1 byte, not {self.sample_above}")
        if self.io_depth is not None and not 1 <= self.io_depth <= MAX_IO_DEPTH:
            raise OptionsError(f"--io-depth must be 1 to {MAX_IO_DEPTH}, not {self.io_depth}")
        if self.workers is not None and self.cluster is not None:
            raise OptionsError(
                "--workers is for local worker processes: --cluster runs on the cluster's"
                " workers (local:N starts N)"
            )
        if self.workers is not None and self.workers < 0:
            raise OptionsError(f"--workers must be 0 (in process) or more, not {self.workers}")
        if self.workers is not None:
            limit, why = worker_limit(cpu_count(), open_file_limit())
            if self.workers > limit:
                raise OptionsError(f"--workers {self.workers} is above the limit of {limit}: {why}")

    def _check_root_on(self) -> None:
        """What `--root-on` needs, and what it is not yet combined with."""
        if not self.root_on:
            return
        if self.cluster is None:
            raise OptionsError("--root-on names a cluster's workers: give --cluster as well")
        for name, path in self.root_on:
            if not name:
                raise OptionsError(f"--root-on ={path!r}: name the workers before the '='")
            if not os.path.isabs(path) or "\0" in path:
                raise OptionsError(
                    f"--root-on {name!r}={path!r}: the directory must be an absolute path on"
                    " those workers' host"
                )
        for option, used in (("--dirs", self.dirs), ("--reference", self.reference)):
            if used:
                raise OptionsError(f"--root-on cannot be combined with {option} yet")

    def _check_windows(self) -> None:
        for name in ("head_window", "tail_window", "chunk_size"):
            if getattr(self, name) < 1:
                raise OptionsError(f"{name} must be at least 1 byte")
        if self.whole_threshold < 0 or self.tail_min_size < 0:
            raise OptionsError("whole_threshold and tail_min_size must be 0 or more")
        unknown = set(self.stages) - {"head", "tail"}
        if unknown:
            raise OptionsError(f"unknown partial stage(s): {', '.join(sorted(unknown))}")

    def _check_patterns(self) -> None:
        for option, patterns, files_only in (
            ("--include", self.include, True),
            ("--exclude", self.exclude, False),
        ):
            for pattern in patterns:
                problem = pattern_problem(pattern, files_only)
                if problem:
                    raise OptionsError(f"{option}: {problem}")

    def accepts_size(self, size: int) -> bool:
        """Empty files only with `empty`; others within `min_size`..`max_size`."""
        if size == 0:
            return self.empty
        return size >= self.min_size and (self.max_size is None or size <= self.max_size)

    def worker_count(self) -> int:
        """Workers to start: the CPUs this process may run on (within `worker_limit`), unless
        set."""
        if self.workers is not None:
            return self.workers
        cpus = cpu_count()
        return min(cpus, worker_limit(cpus, open_file_limit())[0])

    def as_dict(self) -> dict[str, object]:
        """Every option by name (tuples as lists), for the JSON report: new fields join in."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in fields(self)
        }


def worker_limit(cpus: int, open_files: int | None) -> tuple[int, str]:
    """The most worker processes a run may start, and what sets it, in words.

    `WORKERS_PER_CPU` per usable CPU, and no more than the parent's open-file limit holds at
    `FDS_PER_WORKER` descriptors each once `RESERVED_FDS` are kept: (limit - 32) // 4, 248 under
    the common `ulimit -n` of 1024.  `open_files` None: no limit.
    """
    by_cpu = WORKERS_PER_CPU * cpus
    if open_files is None or (open_files - RESERVED_FDS) // FDS_PER_WORKER >= by_cpu:
        return by_cpu, f"{WORKERS_PER_CPU} per usable CPU ({cpus})"
    by_files = max(0, (open_files - RESERVED_FDS) // FDS_PER_WORKER)
    return by_files, (
        f"the open-file limit of {open_files} holds {FDS_PER_WORKER} per worker and "
        f"{RESERVED_FDS} more (raise it with ulimit -n)"
    )


def open_file_limit() -> int | None:
    """This process's soft limit on open descriptors (RLIMIT_NOFILE); None when unlimited."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def cpu_count() -> int:
    """CPUs this process may use (affinity and cgroup aware where psutil can tell), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        import psutil  # only off Linux, where sched_getaffinity is missing

        return max(1, psutil.cpu_count() or 1)
