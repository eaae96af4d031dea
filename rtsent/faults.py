"""Named crash points for testing atomicity: RTSENT_CRASH_AT=<name> kills the process right there.

Production runs never set the variable; tests use it to simulate `kill -9` at the worst moment.
"""

from __future__ import annotations

import os
import signal

ENV = "RTSENT_CRASH_AT"


def crash_point(name: str, step: int | None = None) -> None:
    """SIGKILL this process if RTSENT_CRASH_AT names this point (or `name@step` for a repeated one)."""
    wanted = os.environ.get(ENV)
    if wanted == name or (step is not None and wanted == f"{name}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


STOP_ENV = "RTSENT_INTERRUPT_AT_STEP"
SIGNAL_ENV = "RTSENT_INTERRUPT_SIGNAL"
RANK_ENV = "RTSENT_INTERRUPT_RANK"


def interrupt_point(step: int) -> None:
    """Send this process SIGINT (a Ctrl-C), or RTSENT_INTERRUPT_SIGNAL=TERM, at RTSENT_INTERRUPT_AT_STEP;
    under torchrun, RTSENT_INTERRUPT_RANK=<r> signals that rank only (a signal that reached one rank)."""
    only = os.environ.get(RANK_ENV)
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    if os.environ.get(STOP_ENV) == str(step):
        name = os.environ.get(SIGNAL_ENV, "INT").upper().removeprefix("SIG")
        os.kill(os.getpid(), signal.SIGTERM if name == "TERM" else signal.SIGINT)


DELAY_ENV = "RTSENT_SERVE_DELAY_S"
FAIL_ENV = "RTSENT_SERVE_FAIL_ON"


def scoring_point(texts: list[str]) -> None:
    """Make `rtsent serve` slow or failing on purpose, for its tests: RTSENT_SERVE_DELAY_S=<s> sleeps before
    each batch, RTSENT_SERVE_FAIL_ON=<text> raises when a batch holds that exact text."""
    delay = os.environ.get(DELAY_ENV)
    if delay:
        import time

        time.sleep(float(delay))
    poison = os.environ.get(FAIL_ENV)
    if poison and poison in texts:
        raise RuntimeError(f"injected scoring failure ({FAIL_ENV})")
