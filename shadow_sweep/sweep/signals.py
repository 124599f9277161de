"""SIGTERM during a job (a user's kill, SLURM's time limit, submitit's pre-timeout signal
forwarded as SIGTERM): raised as `Terminated` so that the job writes its `failed` row
(`error: terminated`) and releases its locks and temporary folders; a relaunch reruns the point."""

import signal
import threading
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM (a user's kill, SLURM's time limit) during a job: recorded as a failed point."""


@contextmanager
def terminated_as_error():
    """Inside: SIGTERM raises Terminated in the main thread (elsewhere signals stay as they are),
    so the job's failed row is written and its locks and temporary folders are released."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame) -> None:
        raise Terminated("terminated")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
