"""The read-only duplicate search: walk, group by size, hash in stages, compare, group."""
