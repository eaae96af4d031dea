"""Files every artifact is written and read as: atomic files (a reader sees the old file or the whole new
one), strict JSON (no NaN), and a JSON object read back with an ArtifactError that names the fix."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from rtsent.errors import ArtifactError, UsageError


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """A file handle whose content appears at `path` only when the block ends without error: a reader
    sees the old file or the whole new one, never a part. Text modes write UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the artifact is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_replaceable(path: Path, ours: Callable[[Path], bool], what: str, option: str = "--output") -> None:
    """A path the user named for an output may be new, or a file rtsent wrote there before (`ours`: the same
    kind of output, run again); anything else there (their data, a note, a folder) is never replaced.
    Raises UsageError naming the fix."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; pass a file name for the {what}")
    if path.exists() and not ours(path):
        raise UsageError(f"{option} {path} exists and is not an rtsent {what}; pass a new file name (rtsent "
                         f"replaces only its own {what}s)")


def is_json_with(path: Path, key: str) -> bool:
    """Whether path holds a JSON object with `key` (how an rtsent JSON output is told from other files)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return key in json.load(fh)
    except (OSError, ValueError, TypeError):
        return False


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically (see atomic_file); a NaN or infinity is written as null (see finite)."""
    with atomic_file(path) as fh:
        json.dump(finite(data), fh, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


def write_jsonl(path: Path, rows: Any) -> None:
    """Write one strict JSON object a line, atomically (see atomic_file)."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(finite(row), ensure_ascii=False, allow_nan=False) + "\n")


def finite(value: Any) -> Any:
    """value with every non-finite float inside it (NaN, ±inf) replaced by None: JSON has no such numbers,
    and the bare `NaN` Python writes by default is refused by strict parsers (JavaScript, jq, Go)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def read_json(path: Path, rebuild_hint: str) -> dict:
    """Read a JSON artifact; a missing or corrupt one is an ArtifactError naming the fix."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing; {rebuild_hint}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is unreadable or incomplete ({exc}); {rebuild_hint}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not a JSON object; {rebuild_hint}")
    return data


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
