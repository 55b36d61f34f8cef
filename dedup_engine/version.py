"""The engine's version: one constant, written into every report and printed by `--version`."""

__version__ = "0.1.0"
