"""Atomic checkpoint and file writing, the one checkpoint reader (every format) with clear errors, key
reports, resumable RNG state.

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
import zipfile

import numpy as np
import torch

from utils.errors import SignalError


class OutputError(SignalError):
    """A file could not be written (read-only folder, full disk, ...); the message names the file."""


class CheckpointError(SignalError):
    """A checkpoint or weights file could not be read (truncated, not a torch file, wrong content) or does not
    fit the model (the message lists the keys); names the file."""


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


def _is_safetensors(path):
    """A safetensors file (whatever its name): an 8-byte header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100 * 2 ** 20


def read_checkpoint(path, what="weights file"):
    """The one reader of every checkpoint file: this project's training checkpoints and model files, timm /
    Meta / OpenCLIP state dicts (torch.save or safetensors, whatever the file name), OpenAI CLIP TorchScript
    archives and the official Signal checkpoint. Returns a dict (a saved nn.Module gives its state dict).

    ``what`` names the file in errors: a missing file is a FileNotFoundError, a folder, a truncated, damaged
    or foreign file, or one that holds no dict, a CheckpointError naming the file."""
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a folder: name the checkpoint file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    is_script = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            is_script = any(n.endswith("constants.pkl") for n in z.namelist())
    try:
        if is_script:
            obj = torch.jit.load(path, map_location="cpu").state_dict()
        elif _is_safetensors(path):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one clear message
        raise CheckpointError(f"cannot read the {what} {path} ({os.path.getsize(path)} bytes): the file is truncated, "
                              f"damaged or not a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                              ) from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a {what}: it holds a {type(obj).__name__}, not a dict")
    return obj


def strip_module_prefix(state):
    """Keys without the ``module.`` prefix a DistributedDataParallel / DataParallel wrapper adds."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def key_report(own, state):
    """``(mismatched, unexpected, missing)`` keys of ``state`` against the module state dict ``own``;
    ``mismatched`` maps each key to its line ``key: checkpoint (shape) vs model (shape)``."""
    mismatched = {k: f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)}
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    return mismatched, unexpected, missing


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
