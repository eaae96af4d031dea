"""Upload an exported model folder (weights, tokenizer, rtsent.json, model card) to the Hugging Face hub.

What goes up is what a model page needs, never the machine's private details: the evaluation mistakes
files (full review texts of possibly private data) and the reports' top mistakes stay home, and every
absolute local path in rtsent.json and the reports becomes its last part (`/home/me/data/rt` -> `rt`). The
card is rewritten from those cleaned records. The folder itself is not changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from rtsent.artifacts import card
from rtsent.config import PushConfig
from rtsent.errors import HubError, UsageError, first_line
from rtsent.artifacts.cache import staging
from rtsent.artifacts.files import write_json
from rtsent.artifacts.model import ModelPaths, resolve_model
from rtsent.artifacts.workspace import Workspace

AUTH_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


def run(cfg: PushConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> str:
    """Create the repository if needed (private when asked) and upload the folder; returns its URL.

    Raises UsageError for a malformed repo id or missing login, HubError when the hub refuses or is
    unreachable, ArtifactError when there is no exported model to push.
    """
    folder = Path(resolve_model(ws, cfg.run))
    ws.tmp_dir.mkdir(parents=True, exist_ok=True)
    with staging(ws, "push") as stage:
        try:
            public_copy(folder, stage)
            return _upload(cfg, folder, stage, log)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


PRIVATE = ("-errors.jsonl",)
"""Files that never leave the machine: evaluate --errors' mistakes (review texts) end so."""
DROPPED_KEYS = ("errors", "written_to")
"""Report keys that hold review texts or local file names."""


def public_copy(folder: Path, dest: Path) -> None:
    """What of the model folder goes to the hub, into dest: every file but the private ones (hard links
    where the file system allows), the JSON records cleaned of review texts and local paths, a fresh card."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or path.name.endswith(PRIVATE):
            continue  # staging folders of an export in progress, private files
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json" and (path.name == ModelPaths(folder).meta.name or path.name.startswith("eval-")):
            write_json(target, _public(json.loads(path.read_text(encoding="utf-8"))))
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    card.write(dest)


def _public(value: Any) -> Any:
    """A record without review texts, and with each absolute local path cut to its last part."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k not in DROPPED_KEYS}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    return value


def _upload(cfg: PushConfig, folder: Path, stage: Path, log: Callable[[str], None]) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    try:
        api = HfApi()
        url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True, repo_type="model")
        log(f"uploading {folder} to {cfg.repo_id} (without evaluation mistakes or local paths)")
        api.upload_folder(repo_id=cfg.repo_id, folder_path=str(stage), repo_type="model",
                          commit_message=f"Upload {folder.parent.name if folder.name == 'model' else folder.name} (rtsent)")
    except hub_errors.HFValidationError as exc:
        raise UsageError(f"--repo-id {cfg.repo_id!r} is not a valid repository name ({first_line(exc)}); "
                         f"use user/name or org/name") from None
    except hub_errors.LocalTokenNotFoundError:
        raise UsageError(f"not logged in to the Hugging Face hub; {AUTH_HINT}") from None
    except hub_errors.OfflineModeIsEnabled:
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it and push again") from None
    except hub_errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise HubError(f"the hub refused to write {cfg.repo_id} (HTTP {status}); {AUTH_HINT}") from None
        raise HubError(f"the hub could not take {cfg.repo_id}: {first_line(exc)}; try again later") from None
    except (hub_errors.HTTPError, OSError) as exc:
        raise HubError(f"cannot reach the Hugging Face hub ({first_line(exc)}); check the network (or HF_ENDPOINT "
                       f"and proxy settings) and push again") from None
    return str(url)

