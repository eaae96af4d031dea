"""Files every artifact is written and read as: atomic files (a reader sees the old file or the whole new
one), strict JSON (no NaN), and a JSON object read back with an ArtifactError that names the fix."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from rtsent.errors import ArtifactError


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
