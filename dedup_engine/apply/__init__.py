"""Acting on a report: plan, then carry out one operation at a time, journaled, resumable.

- `plan`: the report and a policy in, the operations out (pure); `preview` shows a plan
  (`--dry-run`, and `--script` with the shell functions of `prelude.sh`).
- `runner`: a plan carried out in order, a batch journaled at a time, with the group rules.
- `operation`: one operation carried out (check, lease, compare, link, commit); `rollback`
  puts the copy back; `outcome` is how an operation ends and where that is recorded.
- `identity` (is it the file, our link, unwritten?) and `access` (who can reach it): the checks
  an operation and `--resume` share; `places`, `aside`: the directories and temporary names
  an operation works with.
- `journal`: the record on disk; `resume` finishes a run from it, `settle` settles each
  operation it left under way.
- `syscalls`: every call that opens, reads or changes a file (the tests' fault point);
  `fsquery`: small read-only questions to the filesystem.
"""
