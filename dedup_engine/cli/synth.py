"""The `dedup synth` command: write a synthetic tree whose duplicate groups are known."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dedup_engine.cli.common import fail_usage
from dedup_engine.report.display import human_size


def synth(
    directory: Annotated[Path, typer.Argument(help="Where to write data/ and manifest.json.")],
    profile: Annotated[
        str, typer.Option(help="small, large, mixed, scale, realistic or backup.")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Same seed, same tree, byte for byte.")] = 1,
    files: Annotated[int | None, typer.Option(help="Number of files (default: profile's).")] = None,
) -> None:
    """Write a deterministic synthetic tree with a manifest of its true duplicate groups."""
    from dedup_engine.bench.synth import Profile, generate

    try:
        chosen = Profile(profile)
    except ValueError:
        fail_usage(f"unknown profile {profile!r} ({', '.join(p.value for p in Profile)})")
    try:
        manifest = generate(directory, chosen, seed, files)
    except ValueError as exc:
        fail_usage(str(exc))
    typer.echo(
        f"{manifest.files} files, {human_size(manifest.bytes)}, {len(manifest.groups)} groups "
        f"holding {manifest.files_in_groups} files; manifest: {directory / 'manifest.json'}",
        err=True,
    )
