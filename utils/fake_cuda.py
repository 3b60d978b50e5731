"""Fake CUDA tensors (torch's FakeTensorMode) for checks and estimates that need no GPU: shapes, dtypes and
devices of a CUDA step under the real CUDA autocast policy, without a driver (torch >= 2.3)."""
import contextlib

import torch
import torch.nn as nn

from .versions import torch_version


def available():
    """FakeTensorMode on device 'cuda' without a driver: torch >= 2.3 (older versions initialise CUDA)."""
    return torch_version() >= (2, 3)


def to_fake(module, mode, device):
    """Replace ``module``'s parameters and buffers by fake tensors of ``mode`` with the same shapes and dtypes
    on ``device``."""
    from torch._subclasses.fake_tensor import FakeTensor
    device = torch.device(device)
    for m in module.modules():
        for n, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[n] = nn.Parameter(FakeTensor(mode, p.detach().to("meta"), device), p.requires_grad)
        for n, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[n] = FakeTensor(mode, b.to("meta"), device)
    return module


@contextlib.contextmanager
def autocast(device_type, dtype):
    """Autocast on ``device_type`` at ``dtype`` (None: off). For 'cuda' the policy is enabled directly, as
    ``torch.autocast('cuda')`` disables itself when no GPU is present."""
    if dtype is None:
        with torch.autocast(device_type, enabled=False):
            yield
        return
    if device_type != "cuda":
        with torch.autocast(device_type, dtype=dtype):
            yield
        return
    try:
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", dtype)
        new_api = True
    except TypeError:  # torch < 2.4
        torch.set_autocast_enabled(True)
        torch.set_autocast_gpu_dtype(dtype)
        new_api = False
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", False) if new_api else torch.set_autocast_enabled(False)
        torch.clear_autocast_cache()
