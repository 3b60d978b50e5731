"""Logging to the console and to ``OUTPUT_DIR/<name>.log`` (only the main process writes)."""
import logging
import os
import sys

from . import comm


def setup_logger(name, output_dir="", filename="log.txt"):
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    if not comm.is_main_process():
        logger.addHandler(logging.NullHandler())
        return logger
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    ch = logging.StreamHandler(sys.stdout)
    ch.setFormatter(fmt)
    logger.addHandler(ch)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, filename))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def setup_logging(output_dir="", filename="log.txt"):
    """Route the project's loggers (``signal.*``) to the console and the log file."""
    return setup_logger("signal", output_dir, filename)
