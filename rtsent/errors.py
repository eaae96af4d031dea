"""Typed errors: library code raises these; only cli.py prints them and picks exit codes."""

from __future__ import annotations


class RtsentError(Exception):
    """A failure the user can act on. The message is one line: what went wrong and how to fix it."""

    exit_code = 1


class UsageError(RtsentError):
    """What the user typed or fed in is wrong (options, files, columns, labels, prompt)."""

    exit_code = 2


class DataError(UsageError):
    """Input data that cannot be used as given."""


class ArtifactError(RtsentError):
    """A workspace artifact is missing, incomplete or does not match what the command needs."""


class HubError(RtsentError):
    """A model or dataset could not be fetched by name from the Hugging Face hub."""


class BusyError(RtsentError):
    """Another rtsent process holds the lock on what this command would write."""


class Interrupted(RtsentError):
    """The user stopped the command (Ctrl-C / SIGTERM) after it saved what it could."""

    exit_code = 130


def first_line(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), cut to limit;
    with typed, after the type's name ("RuntimeError: ..."), for a library's error that rtsent only reports."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    line = (lines[0].strip() if lines else type(exc).__name__)[:limit]
    return f"{type(exc).__name__}: {line}" if typed else line
