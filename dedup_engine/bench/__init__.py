"""Benchmarks and gates on the engine's work, one module each.

`synth` makes trees with known duplicate groups (`synthscale` the scale profile's) and
`treecache` keeps them; `workgate` counts the engine's work and `timegate` times its stages, each
against a file that `baseline` reads and writes; `compare` times the peer tools side by side and
`compare_report` writes what it found; `memory` measures a command's process tree's peak memory.
"""
