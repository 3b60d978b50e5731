"""Distributed helpers; every function is a no-op (or trivial) at world size 1."""
import contextlib
import os

import torch
import torch.distributed as dist

from .errors import SignalError, error_message

# The backend serving CUDA tensors (a test may stand gloo in for it: gloo registered for 'cuda' alone serves
# CUDA tensors only, as NCCL does).
CUDA_BACKEND = "nccl"


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def get_rank():
    return dist.get_rank() if is_dist() else 0


def is_main_process():
    return get_rank() == 0


def launched_world_size():
    """The world size torchrun launched (WORLD_SIZE), before or without a process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_group_backend(device_type):
    """The backend string for a run on ``device_type``: on CUDA, NCCL for CUDA tensors and gloo for CPU
    tensors (evaluation gathers features on the CPU, which NCCL cannot serve); gloo alone on the CPU."""
    return f"cpu:gloo,cuda:{CUDA_BACKEND}" if device_type == "cuda" else "gloo"


def init_distributed(device):
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1) for a run on ``device`` (a
    torch.device; its CUDA device becomes the current one). Returns the local rank."""
    if launched_world_size() <= 1 or is_dist():
        return local_rank()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=process_group_backend(device.type))
    return local_rank()


def cleanup():
    """At the normal end of a run: meet every rank, then destroy the process group, so no rank leaves NCCL /
    gloo resources behind. (A rank that destroys its group after another rank has exited can hang in gloo
    on torch 2.1, hence the barrier first; after an error the group is left to the process exit.)"""
    if is_dist():
        if get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def synchronize():
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def any_rank(flag):
    """Whether ``flag`` is true on any rank (a CPU all-reduce: under NCCL it goes through the gloo part of the
    process group, so the GPU is not synchronised). ``flag`` itself at world size 1."""
    if not is_dist() or get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_tensor(t):
    """Concatenate ``t`` from every rank along dim 0 (sizes may differ between ranks)."""
    if not is_dist() or get_world_size() == 1:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    max_size = int(max(s.item() for s in sizes))
    padded = torch.zeros((max_size,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)], 0)


class OtherRankError(SignalError):
    """Another rank of a distributed run failed in a block every rank had to pass (``same_outcome``); the
    message is that rank's error message."""


@contextlib.contextmanager
def same_outcome(describe=error_message):
    """Every rank leaves the block the same way: when it raised an exception on any rank, it raises on every
    rank, before any further collective (so no rank waits for a rank that is gone, and every rank reports
    the same one line). A failing rank raises its own exception; the others an OtherRankError with the first
    failing rank's ``describe(exception)``. For blocks one rank runs alone (checks, writes by rank 0) and
    that hold no collective themselves. Costs one all-gather of a small object; nothing at world size 1."""
    if not is_dist() or get_world_size() == 1:
        yield
        return
    error = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every exception must reach the other ranks
        error = e
    outcomes = all_gather_object(None if error is None else describe(error))
    if error is not None:
        raise error
    failed = [o for o in outcomes if o is not None]
    if failed:
        raise OtherRankError(failed[0])


def all_gather_object(obj):
    """The list of ``obj`` from every rank (``[obj]`` at world size 1)."""
    if not is_dist() or get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_for_loss(t):
    """``t`` of every rank concatenated along dim 0 in rank order (every rank passes the same shape), for a
    loss that every rank computes on the whole global batch. Only this rank's part carries a gradient, scaled
    by the world size: DDP averages the gradients of the ranks, so the result is the gradient of that loss
    on one process. No communication in the backward. ``t`` itself at world size 1."""
    if not is_dist() or get_world_size() == 1:
        return t
    world = get_world_size()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    if t.requires_grad:  # exactly the value of t, world x its gradient
        parts[get_rank()] = t.detach() + (t - t.detach()) * world
    return torch.cat(parts, 0)


def broadcast_buffers(module, src=0):
    """Copy ``module``'s buffers (e.g. BatchNorm running statistics) from rank ``src`` to every rank."""
    if not is_dist() or get_world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, src)
