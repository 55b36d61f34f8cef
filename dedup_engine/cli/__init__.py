"""The `dedup` command line: a thin edge over the library (the only user of typer and rich)."""
