"""The training run folder (OUTPUT_DIR): one run per folder, held under a lock, resumed only with a
config that does not silently change the run.

A folder *holds a run* once it contains any of the files a run writes (``last.pth``, ``best.pth``,
``metrics.jsonl``, ``summary.json``, numbered checkpoints). A fresh ``train.py`` into such a folder stops
before writing anything: continue it with ``--resume``, pick another OUTPUT_DIR, or pass ``--overwrite`` to
delete the old run's files first.
"""
import json
import logging
import os
import re
import shutil
import socket

import yaml

from config.setup import flatten
from utils.keyfacts import key_table, keys_with
from utils.checkpoint import read_checkpoint

from utils.errors import SetupError

logger = logging.getLogger("signal.run")

RUN_FILES = ("last.pth", "best.pth", "ema.pth", "metrics.jsonl", "summary.json")
# Files a fresh run rewrites; --overwrite deletes them together with RUN_FILES.
RECORD_FILES = ("config.yaml", "train_log.txt")
LOCK_FILE = ".lock"

def free_keys(cfg):
    """Keys that may differ between a checkpoint and the resumed run without changing what is trained: where
    things are, how fast they run, how often the log is written (the FREE keys of config/defaults.py)."""
    return keys_with(cfg, "free")


def shape_keys(cfg):
    """Keys that change the model's tensors: a resume cannot change them (fine-tune into a new folder
    instead). Read from the config's own declarations, its method's keys included."""
    return keys_with(cfg, "shape")


class RunFolderError(SetupError):
    """OUTPUT_DIR cannot take this run (it holds another run, another process writes to it, ...)."""


def _files_matching(out_dir, pattern):
    """The names in ``out_dir`` that match the regular expression ``pattern``, sorted ([] without the folder)."""
    pattern = re.compile(pattern)
    return sorted(f for f in os.listdir(out_dir) if pattern.match(f)) if os.path.isdir(out_dir) else []


def _numbered_checkpoints(out_dir, name):
    return _files_matching(out_dir, re.escape(name) + r"_\d+\.pth$")


def _results_of_run(out_dir, name):
    """test.py's result files of this run's own checkpoints (last, best, numbered) in ``out_dir``: they go
    with the run under --overwrite. Results of checkpoints from elsewhere (``test_<folder>-<name>_...``)
    stay."""
    return _files_matching(out_dir, r"test_(last|best|" + re.escape(name) + r"_\d+)_.*\.(json|npz)$")


def run_files(out_dir, model_name):
    """The files of a training run present in ``out_dir``."""
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    return present + _numbered_checkpoints(out_dir, model_name)


# Lock descriptors this process holds. A forked child (a DataLoader worker) closes its copies at once: a
# flock belongs to the open file, so a worker that outlived a killed main process would otherwise hold the
# run's lock until it noticed and exited.
_HELD = set()


def _close_locks_in_child():
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


class RunLock:
    """An exclusive ``flock`` on OUTPUT_DIR/.lock, held for the life of the main process (the kernel releases
    it when the process ends, even on kill -9; forked workers do not keep it). A second holder gets a
    RunFolderError naming the folder and the process that holds it."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, LOCK_FILE)
        self.fd = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, say so
            logger.warning("file locking is not available here; nothing stops two runs writing to %s", out_dir)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"another run is writing to {out_dir} ({holder}); wait for it to end or set "
                                 f"another OUTPUT_DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        _HELD.add(fd)

    def release(self):
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            _HELD.discard(self.fd)
            os.close(self.fd)
            self.fd = None


def read_metrics(out_dir, last_epoch=None):
    """The per-epoch records of ``out_dir/metrics.jsonl`` in epoch order (the last copy of a repeated epoch),
    up to ``last_epoch`` when given; [] without the file."""
    path = os.path.join(out_dir, "metrics.jsonl")
    records = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    records[r["epoch"]] = r
    return [records[e] for e in sorted(records) if last_epoch is None or e <= last_epoch]


def config_changes(saved_yaml, cfg):
    """[(key, checkpoint value, current value)] for every key whose value differs; keys the checkpoint's
    config does not have (written by an older version) are not reported."""
    old = key_table(cfg).canonical_flat(flatten(yaml.safe_load(saved_yaml) or {}))  # older names: aliases
    new = flatten(yaml.safe_load(cfg.dump()))
    return [(k, old[k], new[k]) for k in sorted(new) if k in old and old[k] != new[k]]


def check_mid_epoch_changes(state, changes, cfg):
    """A checkpoint saved mid-epoch (``state["partial"]``) leaves out the batches already trained: refuse
    ``changes`` (``check_resume_config``'s) that draw another batch order for that epoch, naming the keys.
    Moving the data (DATASETS.ROOT_DIR, a free key) keeps the order."""
    order = keys_with(cfg, "batch_order") - free_keys(cfg)  # keys that fix the order of an epoch's batches
    changed = [k for k, _, _ in changes if k in order]
    if state.get("partial") and changed:
        p = state["partial"]
        raise RunFolderError(f"last.pth was saved mid-epoch (epoch {p['epoch']}, after iteration {p['iterations']}) "
                             f"and {', '.join(changed)} changed, which changes that epoch's batches: resume with "
                             f"the run's values to finish the epoch, then change them on a later --resume")


def check_resume_config(saved_yaml, cfg, allowed, path, notes=None):
    """Refuse config changes against the checkpoint at ``path`` that change the run, unless each key is in
    ``allowed`` (or ``allowed`` holds 'all'); keys that change the model's tensors are refused in any case.
    Returns the list of changes (logged by the caller); ``notes`` collects warnings for the log."""
    notes = [] if notes is None else notes
    changes = config_changes(saved_yaml, cfg)
    stale = sorted(set(key_table(cfg).canonical_flat(flatten(yaml.safe_load(saved_yaml) or {}))) - set(flatten(cfg)))
    if stale:
        notes.append(f"--resume: {path} holds config keys this version does not know ({', '.join(stale)}); "
                     f"they are not compared")
    allowed = {a.strip() for item in allowed for a in item.split(",") if a.strip()}
    allowed = {key_table(cfg).canonical(a) for a in allowed}
    unknown = sorted(a for a in allowed if a != "all" and a not in flatten(yaml.safe_load(cfg.dump())))
    if unknown:
        raise RunFolderError(f"--allow-change: unknown config key(s) {unknown}")
    shape_ = shape_keys(cfg)
    shape = [c for c in changes if c[0] in shape_]
    if shape:
        raise RunFolderError(
            f"--resume: {', '.join(key_table(cfg).label(k) for k, _, _ in shape)} changed against {path} "
            f"({', '.join(f'{old!r} -> {new!r}' for _, old, new in shape)}): that changes the model's tensors, "
            f"so the checkpoint cannot continue; train into another OUTPUT_DIR with MODEL.PRETRAIN_PATH "
            f"{path} to fine-tune from it")
    free = free_keys(cfg)
    refused = [c for c in changes if c[0] not in free and c[0] not in allowed and "all" not in allowed]
    if refused:
        lines = [f"--resume: the config differs from the one {path} was trained with:"]
        lines += [f"  {k}: checkpoint {old!r}, now {new!r}" for k, old, new in refused]
        lines.append("Resume with the checkpoint's values, or continue with the new ones by passing "
                     + " ".join(f"--allow-change {k}" for k, _, _ in refused))
        raise RunFolderError("\n".join(lines))
    return changes


def prepare_run_folder(cfg, resume=False, overwrite=False, allow_changes=(), main_process=True):
    """Check OUTPUT_DIR for a training run before anything is written, and take its lock.

    Returns a ``Run``: its lock, the loaded ``last.pth`` (``state``) when resuming, and the files deleted by
    ``overwrite``. Raises RunFolderError (or CheckpointError) with what to do instead. Other processes of a
    distributed run (``main_process`` False) only read the checkpoint."""
    out = cfg.OUTPUT_DIR
    if not main_process:
        state = read_checkpoint(os.path.join(out, "last.pth"), "training checkpoint") if resume else None
        return Run(None, state, [])
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: pick one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"OUTPUT_DIR {out} is a file, not a folder")
    if resume and not os.path.isfile(os.path.join(out, "last.pth")):
        raise RunFolderError(f"--resume: no checkpoint at {os.path.join(out, 'last.pth')}; "
                             f"start a fresh run without --resume")
    found = run_files(out, cfg.MODEL.NAME)
    if found and not resume and not overwrite:
        raise RunFolderError(
            f"OUTPUT_DIR {out} already holds a training run ({', '.join(found)}). Continue it with --resume, "
            f"set another OUTPUT_DIR, or pass --overwrite to delete that run and start again.")
    try:
        os.makedirs(out, exist_ok=True)
        lock = RunLock(out)
    except OSError as e:
        raise RunFolderError(f"cannot write to OUTPUT_DIR {out}: {e.strerror or e}") from None
    state, removed = None, []
    try:
        if overwrite and found:
            removed = found + [f for f in RECORD_FILES if os.path.exists(os.path.join(out, f))]
            removed += _results_of_run(out, cfg.MODEL.NAME)
            for f in removed:
                os.remove(os.path.join(out, f))
            if os.path.isdir(os.path.join(out, "tensorboard")):
                shutil.rmtree(os.path.join(out, "tensorboard"))
                removed.append("tensorboard/")
        if resume:
            path = os.path.join(out, "last.pth")
            state = read_checkpoint(path, "training checkpoint")
            missing = [k for k in ("model", "optimizer", "epoch") if k not in state]
            if missing:
                raise RunFolderError(f"{path} is not a resumable training checkpoint (it lacks {missing}); "
                                     f"last.pth is written by train.py")
            state["notes"] = []
            if state.get("config"):
                state["changes"] = check_resume_config(state["config"], cfg, allow_changes, path, state["notes"])
                check_mid_epoch_changes(state, state["changes"], cfg)
            else:
                state["changes"] = []
                state["notes"].append(f"--resume: {path} stores no config, so the current one cannot be checked "
                                      f"against the run's; make sure it is the config the run was trained with")
    except BaseException:
        lock.release()
        raise
    return Run(lock, state, removed)


class Run:
    """What ``prepare_run_folder`` found: ``lock`` (held), ``state`` (last.pth when resuming, with the
    config ``changes`` against it), ``removed`` (files deleted by --overwrite)."""

    def __init__(self, lock, state, removed):
        self.lock, self.state, self.removed = lock, state, removed

    def release(self):
        if self.lock is not None:
            self.lock.release()
