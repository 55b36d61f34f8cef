"""The read-only duplicate search: walk, group by size, hash in stages, compare, group.

The parent process is the coordinator: it sees only keys and hands work to worker processes,
each of which owns the files it scanned.  Each module is on one side, or is shared by both:

- `pipeline` (coordinator): `find_duplicates`, the stages in order.
- `groups` (coordinator): file keys, size groups with hard links collapsed, and the final groups.
- `hashstep` (coordinator): a stage's batches out to the owners of their files, results in, and
  groups split by them.
- `pool` (coordinator, and the workers' main loop): carrying tasks to the workers and results
  back.
- `store` (worker): the rows a worker owns, one per file it scanned.
- `walk` (worker): listing directories into the worker's rows and keys for the coordinator.
- `hashtasks` (worker): hashing the head or tail window of each file.
- `entries` (worker): the paths and identities of the worker's rows, stat'ed again where asked.
- `fullcompare` (worker): the full stage, a group's members read side by side.
- `readers` (worker): a task's reads shared out by device, between threads or in physical order.
- `device` (worker): which kind of device holds a file, and its read depth.
- `readorder` (worker): a spinning disk's files in physical order.
- `changes` (worker): whether a file read is still the one the scan saw.
- `tasks` (both): the messages between the two sides, and a stage's `Window`.
"""
