"""Shared start-up of train.py and test.py: arguments, config, logging, seed, device."""
import argparse
import os

import torch

from config import load_config
from utils import comm
from utils.checkpoint import atomic_write_text
from utils.cpu import keep_freed_memory
from utils.logger import setup_logging
from utils.seed import set_seed


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config_file", default="", help="YAML config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUTPUT_DIR/last.pth")
    p.add_argument("--save-features", default="", help="test.py: save query/gallery features to this .npz")
    p.add_argument("opts", nargs="*", help="KEY VALUE pairs overriding the config")
    return p.parse_intermixed_args()


def resolve_device(cfg, local_rank=0):
    dev = cfg.MODEL.DEVICE
    if dev == "auto":
        dev = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(dev)


def default_setup(args, log_name):
    """Config (frozen), logger, seed and device; the resolved config is dumped to OUTPUT_DIR."""
    local_rank = comm.init_distributed()
    cfg = load_config(args.config_file, args.opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    logger = setup_logging(cfg.OUTPUT_DIR, log_name)
    logger.info("Config file: %s; overrides: %s", args.config_file or "(defaults)", args.opts)
    if comm.is_main_process():
        atomic_write_text(cfg.dump(), os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    set_seed(cfg.SOLVER.SEED + comm.get_rank(), cfg.SOLVER.DETERMINISTIC)
    device = resolve_device(cfg, local_rank)
    if device.type == "cpu" and cfg.SOLVER.CPU_KEEP_FREED_MEMORY:
        keep_freed_memory()
    return cfg, logger, device


def run_cli(main):
    """Run ``main``; errors about the user's input (config, data, weights) end the program with a one-line
    message and exit code 2 instead of a traceback."""
    import sys

    from data.datasets import DatasetError
    from modeling.weights import WeightsError
    try:
        main()
    except (DatasetError, WeightsError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
