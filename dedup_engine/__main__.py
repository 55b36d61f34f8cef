"""`python -m dedup_engine`: the same as the `dedup` command."""

from dedup_engine.cli.app import main

main()
