"""Named crash points for testing atomicity: RTSENT_CRASH_AT=<name> kills the process right there.

Production runs never set the variable; tests use it to simulate `kill -9` at the worst moment.
"""

from __future__ import annotations

import os
import signal

ENV = "RTSENT_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if RTSENT_CRASH_AT names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


STOP_ENV = "RTSENT_INTERRUPT_AT_STEP"


def interrupt_point(step: int) -> None:
    """Send this process SIGINT (a Ctrl-C) once training reaches RTSENT_INTERRUPT_AT_STEP."""
    if os.environ.get(STOP_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGINT)
