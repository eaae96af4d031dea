"""Reaching the Hugging Face hub: fail fast when offline, and then use what is already cached."""

from __future__ import annotations

import os
import socket

HUB_HOST = ("huggingface.co", 443)
_checked = False


def prefer_cache_when_offline(timeout: float = 3.0) -> None:
    """Before loading by hub name: if the hub cannot be reached, switch this process to offline mode.

    huggingface_hub would otherwise retry for most of a minute before failing; offline mode makes a
    name that is in the local HF cache load at once, and one that is not fail at once.
    """
    global _checked
    if _checked or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return
    _checked = True
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:  # already-imported huggingface_hub reads its constant at call time
            import huggingface_hub.constants as constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
