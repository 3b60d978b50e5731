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
