"""Upload an exported model folder (weights, tokenizer, rtsent.json, model card) to the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rtsent.artifacts import card
from rtsent.config import PushConfig
from rtsent.errors import HubError, UsageError, first_line
from rtsent.artifacts.model import ModelPaths, resolve_model
from rtsent.artifacts.workspace import Workspace

AUTH_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


def run(cfg: PushConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> str:
    """Create the repository if needed (private when asked) and upload the folder; returns its URL.

    Raises UsageError for a malformed repo id or missing login, HubError when the hub refuses or is
    unreachable, ArtifactError when there is no exported model to push.
    """
    folder = Path(resolve_model(ws, cfg.run))
    if not ModelPaths(folder).card.is_file():
        card.write(folder)
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    try:
        api = HfApi()
        url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True, repo_type="model")
        log(f"uploading {folder} to {cfg.repo_id}")
        api.upload_folder(repo_id=cfg.repo_id, folder_path=str(folder), repo_type="model",
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

