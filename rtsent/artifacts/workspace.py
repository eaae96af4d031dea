"""The on-disk contract: every path a stage reads or writes is named here.

    <workdir>/
      prepared/<fingerprint>/     DatasetDict (save_to_disk) + manifest.json, written last (artifacts/prepared.py)
      runs/<run-name>/
        run.json                  resolved train config and the prepared fingerprint
        metrics.jsonl             one JSON object per log/eval event
        checkpoints/checkpoint-N/ Trainer checkpoints (a bounded number)
        model/                    exported best model: HF folder + rtsent.json, written last (artifacts/model.py)
        tensorboard/              TensorBoard events (with --report-to tensorboard)
      current.json                {"prepared": fingerprint the last `prepare` resolved to, hit or build}
      evals/                      evaluation reports of models that live outside the workspace
      .tmp/                       staging folders, renamed into place when complete
      .locks/                     lock files
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rtsent.artifacts.model import META_FILE
from rtsent.errors import ArtifactError, UsageError

CURRENT = "current.json"
RUN_FILE = "run.json"
ENV_HOME = "RTSENT_HOME"
DEFAULT_WORKDIR = "data"


@dataclass(frozen=True)
class RunPaths:
    """Paths of one training run."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        return self.dir / RUN_FILE

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    def exists(self) -> bool:
        return self.config.is_file()

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"


@dataclass(frozen=True)
class Workspace:
    """A workspace folder and every path inside it."""

    root: Path

    @classmethod
    def resolve(cls, workdir: str | os.PathLike | None = None) -> "Workspace":
        """The workspace named by --workdir, else $RTSENT_HOME, else ./data. Raises UsageError if it is a file."""
        root = Path(workdir or os.environ.get(ENV_HOME) or DEFAULT_WORKDIR).expanduser()
        if root.exists() and not root.is_dir():
            raise UsageError(f"workspace {root} is a file, not a folder; pass --workdir to a folder")
        return cls(root)

    def ensure(self) -> "Workspace":
        """Create the workspace's folders; raises ArtifactError if it cannot be written."""
        try:
            for sub in (self.prepared_dir, self.runs_dir, self.tmp_dir, self.locks_dir):
                sub.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot write to workspace {self.root} ({exc.strerror}); pass --workdir to a writable folder"
            ) from None
        if not os.access(self.root, os.W_OK):
            raise ArtifactError(f"workspace {self.root} is read-only; pass --workdir to a writable folder")
        return self

    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def evals_dir(self) -> Path:
        return self.root / "evals"

    @property
    def tmp_dir(self) -> Path:
        return self.root / ".tmp"

    @property
    def locks_dir(self) -> Path:
        return self.root / ".locks"

    def prepared(self, fingerprint: str) -> Path:
        return self.prepared_dir / fingerprint

    @property
    def current_file(self) -> Path:
        return self.root / CURRENT

    def run(self, name: str) -> RunPaths:
        return RunPaths(self.runs_dir / name)

    def lock_path(self, key: str) -> Path:
        return self.locks_dir / f"{key}.lock"

    def latest_model(self) -> Path:
        """The exported model of the most recently finished run."""
        newest = _newest(self.runs_dir.glob(f"*/model/{META_FILE}"))
        if newest is None:
            raise ArtifactError(
                f"no trained model in {self.runs_dir}; run `rtsent train` first or pass --model"
            )
        return newest.parent

    def runs(self) -> list[RunPaths]:
        """Every run that has a run.json, newest first (by when it was written)."""
        found = []
        for path in self.runs_dir.glob(f"*/{RUN_FILE}"):
            try:
                found.append((path.stat().st_mtime_ns, path.parent.name))
            except OSError:
                continue
        return [self.run(name) for _, name in sorted(found, reverse=True)]

    def latest_run(self) -> RunPaths:
        """The run whose run.json was written last (finished or not)."""
        newest = _newest(self.runs_dir.glob(f"*/{RUN_FILE}"))
        if newest is None:
            raise ArtifactError(f"no run to resume in {self.runs_dir}; start one with `rtsent train`")
        return RunPaths(newest.parent)


def _newest(paths) -> Path | None:
    best, best_time = None, None
    for path in paths:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            continue
        if best_time is None or mtime > best_time:
            best, best_time = path, mtime
    return best
