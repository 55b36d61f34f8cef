"""The read-only duplicate search: walk, group by size, hash in stages, compare, group.

The parent process runs the pipeline and hands work to worker processes; each module is on one
side, or is shared by both:

- `pipeline` (parent): `find_duplicates`, the stages in order.
- `groups` (parent): size groups with hard links collapsed, and the final groups.
- `hashstep` (parent): a hashing stage's batches out and digests in; groups split by them.
- `pool` (parent, and the workers' main loop): carrying tasks to the workers and results back.
- `walk` (worker): listing directories into file rows.
- `hashtasks` (worker): hashing the head or tail window of each file.
- `fullcompare` (worker): the full stage, a group's members read side by side.
- `tasks` (both): the messages between the two sides, and a stage's `Window`.
- `table` (both): the file table, one row per file, in columns.
- `changes` (both): whether a file read is still the one the scan saw.
"""
