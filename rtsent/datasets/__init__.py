"""Datasets that ship inside the package, so the default job needs no network.

`--data rotten_tomatoes` (the default) reads the folder here; the hub's copy stays reachable by its full
hub name, `--data cornell-movie-review-data/rotten_tomatoes`. A local folder of the same name in the
working directory comes first, as any folder does. Provenance and hashes: rotten_tomatoes/README.md.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = {"rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes"}
"""Name rtsent takes -> the hub dataset the shipped files reproduce."""


def shipped(name: str) -> Path | None:
    """The folder of a dataset shipped with rtsent (one <split>.parquet per split), or None."""
    return HERE / name if name in SHIPPED else None
