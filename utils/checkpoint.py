"""Atomic checkpoint and file writing, checkpoint reading with clear errors, resumable RNG state.

Every file is written to a temporary file in the destination folder, flushed to disk and renamed over the
destination, so a crash, ``kill -9`` or full disk never leaves a half-written file under the real name.
New files get the permissions of the process umask (as ``open()`` would give them), not the 0600 of a
temporary file.
"""
import json
import os
import random
import shutil
import tempfile

import numpy as np
import torch

from utils.errors import SignalError


class OutputError(SignalError):
    """A file could not be written (read-only folder, full disk, ...); the message names the file."""


class CheckpointError(SignalError):
    """A checkpoint could not be read (truncated, not a torch file, wrong content); names the file."""


def current_umask():
    """The process umask, read without changing it where /proc allows (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_hint(folder):
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free / 2 ** 20:.0f} MiB free on that disk)" if free < 2 ** 30 else ""


def atomic_write(path, write, binary=True):
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it over ``path``.

    Raises OutputError naming ``path`` when the folder cannot be created or written, or the disk is full."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}{_disk_hint(folder)}") from None
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - torch.save reports a full disk as a RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise OutputError(f"cannot write {path}: {reason}{_disk_hint(folder)}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    """torch.save ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text, path):
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(obj, path):
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_write_jsonl(records, path):
    """One JSON object per line (the whole file is rewritten, so it always matches ``records``)."""
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def load_checkpoint(path, what="checkpoint"):
    """``torch.load`` of a file this project wrote; a missing, truncated or foreign file is a
    CheckpointError naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no {what} at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one clear message
        size = os.path.getsize(path)
        raise CheckpointError(f"cannot read the {what} {path} ({size} bytes): the file is truncated, damaged "
                              f"or not a torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                              ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a {what}: it holds a {type(state).__name__}, not a dict")
    return state


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
