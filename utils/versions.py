"""Version checks for features that depend on the installed torch."""
import torch


def torch_version():
    """(major, minor) of the installed torch, e.g. (2, 1) for '2.1.2+cu121'."""
    return tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
