"""Fingerprints, locks and atomic publishing: build in a staging folder, rename into place, manifest last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from rtsent.errors import ArtifactError, BusyError
from rtsent.faults import crash_point
from rtsent.artifacts.files import umask
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
def staging(ws: Workspace, name: str) -> Iterator[Path]:
    """A fresh folder under .tmp/ for building an artifact; removed if the build fails."""
    clean_stale(ws)
    path = Path(tempfile.mkdtemp(dir=ws.tmp_dir, prefix=f"{os.getpid()}-{name}-"))
    os.chmod(path, 0o777 & ~umask())  # mkdtemp makes 0700; the published artifact should not be
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder inside parent for the block's work (files built there are renamed into place), removed
    afterwards with whatever is left in it."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def readable(folder: Path) -> None:
    """Give every file in folder the mode a new file gets (0644 under umask 022). safetensors writes its
    files 0600, which left the weights alone unreadable to the group and others in a published folder."""
    mode = 0o666 & ~umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


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
        if not (pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))):
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (another user's too): the staging folders it named are in use."""
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
