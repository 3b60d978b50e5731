"""Shared start-up of train.py and test.py: arguments, config, logging, seed, device."""
import argparse
import logging
import os

import torch

from config import load_config
from utils import comm
from utils.checkpoint import atomic_write_text
from utils.cpu import keep_freed_memory
from utils.errors import DeviceError, SetupError, SignalError, UsageError, error_message  # noqa: F401 (re-exported)
from utils.logger import setup_logging
from utils.seed import set_seed
from utils.versions import torch_version


def argument_parser(description):
    """The arguments train.py and test.py share: ``--config_file`` and the ``KEY VALUE`` overrides. Each
    program adds its own flags, so a flag of the other one is refused by name (argparse, exit code 2)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config_file", default="", help="YAML config (see configs/)")
    p.add_argument("opts", nargs="*", help="KEY VALUE pairs overriding the config")
    return p


def check_packages():
    """torch < 2.3 was built against NumPy 1.x and breaks with NumPy 2 (tensor <-> array conversions)."""
    import numpy as np
    if torch_version() < (2, 3) and int(np.__version__.split(".")[0]) >= 2:
        raise SetupError(f"torch {torch.__version__} was built against NumPy 1.x and cannot use the installed "
                         f"NumPy {np.__version__}: pip install 'numpy<2' (or a torch >= 2.3)")


def _cuda_unavailable_reason():
    """Why torch sees no usable CUDA device, in the user's terms."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count()
    detail = " ".join(str(w.message).strip() for w in caught)
    if torch.version.cuda is None:
        return f"the installed torch {torch.__version__} is a CPU-only build"
    why = (f"the installed torch {torch.__version__} is built for CUDA {torch.version.cuda} but found "
           f"{count} usable GPU(s)")
    if detail:
        why += f" ({detail})"
    else:
        why += " (no GPU visible, or an NVIDIA driver too old for this CUDA build: check nvidia-smi)"
    return why


def resolve_device(cfg, local_rank=0, training=False):
    """The torch device of MODEL.DEVICE ('auto': CUDA when available, else the CPU).

    'auto' falling back to the CPU for a full-size backbone (anything but 'vit_custom') is an error when
    ``training`` (a ViT-B/16 recipe would train for days) and a loud warning otherwise; MODEL.DEVICE cpu
    asks for the CPU explicitly. 'cuda' is the GPU of ``local_rank`` (torchrun's LOCAL_RANK); under torchrun
    a fixed 'cuda:N' (every rank on one GPU) is an error."""
    dev = cfg.MODEL.DEVICE
    world = comm.launched_world_size()
    if dev == "auto":
        if torch.cuda.is_available():
            dev = "cuda"
        else:
            dev = "cpu"
            from modeling.backbone import backbone_spec
            if not backbone_spec(cfg.MODEL.TRANSFORMER_TYPE).small:
                msg = (f"MODEL.DEVICE auto found no usable CUDA GPU: {_cuda_unavailable_reason()}. "
                       f"The {cfg.MODEL.TRANSFORMER_TYPE} recipe on the CPU takes days per run")
                if training:
                    raise DeviceError(msg + "; install the PyTorch build that matches your driver (README, "
                                            "Install), or pass MODEL.DEVICE cpu to train on the CPU anyway.")
                logging.getLogger("signal").warning("%s; evaluating on the CPU (MODEL.DEVICE cpu silences "
                                                    "this warning).", msg)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but no usable CUDA GPU: "
                              f"{_cuda_unavailable_reason()}; use 'cpu' or 'auto'")
        if dev != "cuda" and world > 1:
            raise DeviceError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} would put all {world} torchrun processes on "
                              f"one GPU: use MODEL.DEVICE cuda (or auto), which gives each process the GPU of "
                              f"its LOCAL_RANK, and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if dev == "cuda":
            dev = f"cuda:{local_rank}"
        index = torch.device(dev).index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{dev} does not exist: torch sees {torch.cuda.device_count()} GPU(s)"
                              + (f" for {world} torchrun processes (--nproc_per_node must not exceed the GPUs)"
                                 if world > 1 else ""))
    device = torch.device(dev)
    check_amp(cfg, device)
    return device


def check_amp(cfg, device):
    """SOLVER.AMP must run on ``device``: bf16 on CUDA needs compute capability >= 8.0 (Ampere); AMP on the
    CPU (SOLVER.AMP_ON_CPU) needs a torch whose CPU autocast has the dtype, and a CPU GradScaler for fp16."""
    s = cfg.SOLVER
    if device.type == "cuda" and s.AMP == "bf16":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 0):
            raise DeviceError(f"SOLVER.AMP bf16: the GPU {device} ({torch.cuda.get_device_name(device)}, compute "
                              f"capability {major}.{minor}) has no bfloat16 units (they start at 8.0, Ampere); "
                              f"use SOLVER.AMP fp16 (the official recipe) or none")
    if device.type == "cpu" and s.AMP_ON_CPU and s.AMP == "fp16" and torch_version() < (2, 3):
        raise DeviceError(f"SOLVER.AMP_ON_CPU with SOLVER.AMP fp16 needs torch >= 2.3 (CPU fp16 autocast and a "
                          f"CPU GradScaler); torch {torch.__version__} has neither: use SOLVER.AMP bf16 or a "
                          f"newer torch")


def write_config(cfg):
    """The resolved config to OUTPUT_DIR/config.yaml (main process)."""
    if comm.is_main_process():
        atomic_write_text(cfg.dump(), os.path.join(cfg.OUTPUT_DIR, "config.yaml"))


def default_setup(args, log_name, training=False):
    """Config (frozen), device, logger and seed. Returns ``(cfg, logger, device, run)``.

    Nothing is written before the config and the device are checked. For training, OUTPUT_DIR is then
    checked and locked (``engine.rundir``; ``run`` holds the lock and, with --resume, the checkpoint) and
    the resolved config is written to OUTPUT_DIR/config.yaml (by train.py once a resume has worked);
    ``run`` is None otherwise."""
    check_packages()
    cfg = load_config(args.config_file, args.opts)
    device = resolve_device(cfg, comm.local_rank(), training)
    comm.init_distributed(device)
    run = None
    # Rank 0 alone checks and locks the run folder: every rank fails with its error, before any collective.
    with comm.same_outcome():
        if training:
            from .rundir import prepare_run_folder
            run = prepare_run_folder(cfg, getattr(args, "resume", False), getattr(args, "overwrite", False),
                                     getattr(args, "allow_change", ()), main_process=comm.is_main_process())
        else:
            try:
                os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            except OSError as e:
                raise SetupError(f"cannot create OUTPUT_DIR {cfg.OUTPUT_DIR}: {e.strerror or e}") from None
        logger = setup_logging(cfg.OUTPUT_DIR, log_name)
    if training:
        logger.info("=" * 20 + (" resumed run " if run.state is not None else " new run ") + "=" * 20)
    logger.info("Config file: %s; overrides: %s", args.config_file or "(defaults)", args.opts)
    logger.info("Device: %s (torch %s, CUDA build %s)", device, torch.__version__, torch.version.cuda)
    if run is not None:
        if run.removed:
            logger.warning("--overwrite: deleted the previous run's %s", ", ".join(run.removed))
        for key, old, new in (run.state or {}).get("changes", []):
            logger.warning("--resume: %s changed from %r (checkpoint) to %r", key, old, new)
        for note in (run.state or {}).get("notes", []):
            logger.warning("%s", note)
        if run.state is None:  # a resumed run writes it once the resume worked
            with comm.same_outcome():
                write_config(cfg)
    set_seed(cfg.SOLVER.SEED + comm.get_rank(), cfg.SOLVER.DETERMINISTIC)
    if device.type == "cpu" and cfg.SOLVER.CPU_KEEP_FREED_MEMORY:
        keep_freed_memory()
    return cfg, logger, device, run


def _to_log_file(level, msg, exc_info=None):
    """Write to the log file only (the console already shows the message or the traceback)."""
    log = logging.getLogger("signal")
    record = log.makeRecord(log.name, level, __file__, 0, msg, None, exc_info)
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def run_cli(main):
    """Run ``main``; errors about the user's input (config, data, weights, output folder, device) end the
    program with a one-line ``error:`` message and exit code 2 instead of a traceback. Every fatal error is
    also written to the log file when one is open."""
    import sys

    from .preemption import PREEMPTED_EXIT_CODE, Preempted
    try:
        main()
        comm.cleanup()
    except (SignalError, OSError, KeyError, ValueError) as e:
        msg = error_message(e)
        _to_log_file(logging.ERROR, f"error: {msg}")
        sys.stderr.write(f"error: {msg}\n")  # one write: the lines of torchrun's ranks do not interleave
        sys.exit(2)
    except Preempted as e:  # the loop saved and logged what it saved
        sys.stderr.write(f"{e}\n")
        sys.exit(PREEMPTED_EXIT_CODE)
    except KeyboardInterrupt as e:
        done = getattr(e, "saved", None)  # engine.preemption.Interrupted, from the training loop
        saved = (f"{done['path']} holds epoch {done['epoch']}" + (f" and {done['iteration']} iterations of the "
                 f"next" if done["iteration"] else "") + "; continue with --resume") if done else "no epoch saved yet"
        _to_log_file(logging.ERROR, f"interrupted (Ctrl-C): {saved}")
        sys.stderr.write(f"\ninterrupted (Ctrl-C): {saved}\n")
        sys.exit(130)
    except Exception as e:
        _to_log_file(logging.ERROR, f"fatal error: {type(e).__name__}: {e}", sys.exc_info())
        raise
