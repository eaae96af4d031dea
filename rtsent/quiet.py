"""Libraries' chatter kept off the user's terminal: transformers' logging, the ONNX exporters' loggers and
warnings, and onnxruntime's advice through the root logger. Errors still raise; heavy libraries are
imported only inside the functions."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning chatter for the duration (errors still raise)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter logs and warns at length about things that do not matter here (torchvision ops,
    axis names); errors still raise."""
    with quiet_loggers("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """The named loggers (none: the root logger) at ERROR for the duration, then back at their levels."""
    loggers = [logging.getLogger(n) for n in names] if names else [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
