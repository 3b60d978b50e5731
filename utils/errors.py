"""How an error reads to the user."""
import re


def error_message(e):
    """One line (or the exception's own lines) for the user: a KeyError's key text without quotes, and an
    error raised inside a DataLoader worker without the embedded worker traceback."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.strerror:
        msg = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    if "Original Traceback (most recent call last)" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = re.sub(r"^[\w.]+(Error|Exception|Interrupt)?: ", "", last.strip())
    return msg


class SignalError(RuntimeError):
    """Base of the errors about what the user gave: config, data, weights, checkpoints, output folder,
    device, command line. The entry points (``engine.setup.run_cli``: train.py, test.py and every tool) print
    its message as one ``error:`` line and exit with code 2; any other exception is a bug and keeps its
    traceback."""


class UsageError(SignalError):
    """A tool's command line asks for something it cannot do (a flag combination, a missing input)."""


class SetupError(SignalError):
    """The environment cannot run what was asked (installed packages, device, output folder)."""


class DeviceError(SetupError):
    """MODEL.DEVICE cannot be honoured, or 'auto' would silently train a full-size model on the CPU."""
