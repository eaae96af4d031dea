"""Fingerprints, locks and atomic publishing: build in a staging folder, rename into place, manifest last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from rtsent.errors import ArtifactError, BusyError
from rtsent.faults import crash_point
from rtsent.artifacts.workspace import Workspace

# Bumped whenever the layout or content of a stage's output changes, so old caches are not reused.
FORMAT_VERSION = 1


def fingerprint(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able payload (the options that change a stage's output)."""
    blob = json.dumps({"format": FORMAT_VERSION, **payload}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hash_files(paths: list[Path]) -> str:
    """Content hash of files (names relative to nothing: only bytes and order count)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the artifact is as readable as any file
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


@contextlib.contextmanager
def staging(ws: Workspace, name: str) -> Iterator[Path]:
    """A fresh folder under .tmp/ for building an artifact; removed if the build fails."""
    clean_stale(ws)
    path = Path(tempfile.mkdtemp(dir=ws.tmp_dir, prefix=f"{os.getpid()}-{name}-"))
    os.chmod(path, 0o777 & ~_umask())  # mkdtemp makes 0700; the published artifact should not be
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def readable(folder: Path) -> None:
    """Give every file in folder the mode a new file gets (0644 under umask 022). safetensors writes its
    files 0600, which left the weights alone unreadable to the group and others in a published folder."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


DEST_MARK = ".rtsent-dest"


def publish(staged: Path, dest: Path) -> None:
    """Move a complete staged folder to dest, replacing an old one without a moment of half state.

    Before dest is touched the staged folder records where it goes, so that a kill between the two
    renames below is repaired by the next clean_stale (which finishes the move) instead of losing both.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    readable(staged)
    (staged / DEST_MARK).write_text(str(dest.resolve()), encoding="utf-8")
    old = None
    if dest.exists():
        old = staged.parent / f"{os.getpid()}-old-{dest.name}-{time.time_ns()}"
        os.rename(dest, old)
    crash_point("publish:between-renames")
    os.rename(staged, dest)
    (dest / DEST_MARK).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(ws: Workspace) -> None:
    """Remove staging folders left by processes that no longer run (killed mid-write).

    A complete folder that was killed in the middle of publish() (it records its destination, and
    that destination is gone) is moved into place first.
    """
    if not ws.tmp_dir.is_dir():
        return
    for entry in sorted(ws.tmp_dir.iterdir(), key=lambda e: "-old-" in e.name):
        pid = entry.name.split("-")[0]
        if not (pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))):
            continue
        mark = entry / DEST_MARK
        if "-old-" not in entry.name and mark.is_file():
            dest = Path(mark.read_text(encoding="utf-8"))
            if not dest.exists():
                with contextlib.suppress(OSError):  # a read-only workspace: leave it for a writer
                    os.rename(entry, dest)
                    (dest / DEST_MARK).unlink(missing_ok=True)
                continue
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def locked(ws: Workspace, key: str, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the workspace lock `key`; if another process holds it for `wait` seconds, raise BusyError."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(ws.lock_path(key)))
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise BusyError(
            f"{what} is in use by another rtsent process (lock {ws.lock_path(key)}); wait for it to finish"
        ) from None
    except OSError as exc:
        raise ArtifactError(f"cannot lock {ws.lock_path(key)} ({exc.strerror})") from None
    try:
        yield
    finally:
        lock.release()
