"""Distributed helpers; every function is a no-op (or trivial) at world size 1."""
import os

import torch
import torch.distributed as dist


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def get_rank():
    return dist.get_rank() if is_dist() else 0


def is_main_process():
    return get_rank() == 0


def init_distributed():
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1). Returns local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_dist():
        return int(os.environ.get("LOCAL_RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return local_rank


def synchronize():
    if is_dist() and get_world_size() > 1:
        dist.barrier()


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


def broadcast_buffers(module, src=0):
    """Copy ``module``'s buffers (e.g. BatchNorm running statistics) from rank ``src`` to every rank."""
    if not is_dist() or get_world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, src)
