"""Stopping a training run on request: cluster schedulers send SIGTERM (SLURM: SIGUSR1 or SIGTERM, some
time before the kill) and requeue the job. While ``stop_signals`` is active those signals only set a flag;
the training loop checks it between iterations, writes a mid-epoch ``last.pth`` and raises ``Preempted``,
which ``run_cli`` turns into one line and exit code ``PREEMPTED_EXIT_CODE``. ``--resume`` then continues from
that iteration exactly.
"""
import contextlib
import signal
import threading

# EX_TEMPFAIL (sysexits.h): "temporary failure, try again": a requeue script can tell it from an error (1, 2).
PREEMPTED_EXIT_CODE = 75
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))

_received = []


class Preempted(Exception):
    """The run stopped on a signal after saving its state; ``args[0]`` says what was saved."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``saved``: what ``last.pth`` holds ({path, epoch, iteration}, {} when no
    epoch was saved yet)."""

    def __init__(self, saved=None):
        super().__init__()
        self.saved = dict(saved or {})


def requested():
    """The name of the first stop signal received while ``stop_signals`` was active, or ''."""
    return signal.Signals(_received[0]).name if _received else ""


def _note(signum, frame):
    _received.append(signum)


@contextlib.contextmanager
def stop_signals():
    """Turn SIGTERM / SIGUSR1 into a stop request for the block (main thread only: elsewhere Python cannot
    install handlers, and the default behaviour stays). The previous handlers come back afterwards."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _note) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()
