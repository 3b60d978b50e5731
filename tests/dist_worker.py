"""Two-process checks of the distributed path, run under torchrun by tests/test_distributed.py:

``python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py OUT_DIR KEY VALUE ...``

starts the process group as on CUDA (``comm.init_distributed`` on a 'cuda' device), with gloo registered for
CUDA tensors only standing in for NCCL, and on it:

* evaluation gathers its (CPU) features; a group of the stand-in alone refuses CPU tensors, as NCCL does;
* one DDP training step of the tiny model on the global batch ``global_batch()`` split by identity between
  the ranks, with and without SOLVER.GATHER_EMBEDDINGS (loss terms averaged over the ranks, gradients);
* every rank's random state goes into a training checkpoint (in OUTPUT_DIR) and each rank resumes its own.

Each rank writes its results to OUT_DIR/rank<r>.json.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

from config import load_config  # noqa: E402
from modeling import MODALITIES, build_loss, build_model  # noqa: E402
from utils import comm  # noqa: E402


def global_batch(cfg, ids=4, k=2, seed=0):
    """A P x K batch: images, identities 0..ids-1 (k samples each, consecutive), cameras."""
    g = torch.Generator().manual_seed(seed)
    n = ids * k
    images = {m: torch.randn(n, 3, *cfg.INPUT.SIZE_TRAIN, generator=g) for m in MODALITIES}
    return images, torch.arange(ids).repeat_interleave(k), torch.randint(0, 3, (n,), generator=g)


def training_terms(cfg, images, pid, cams, wrap=lambda m: m):
    """Loss terms and gradients of one training forward + backward of the tiny model (seed 0) on a batch.
    BatchNorm uses its running statistics (eval mode) so that the samples of a batch do not interact through
    it: the step then depends on the split of the batch between ranks only through the gathered losses."""
    torch.manual_seed(0)
    raw = build_model(cfg, 6, 3).train()
    for m in raw.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eval()
    model = wrap(raw)
    losses = build_loss(cfg)(model(images, cam_label=cams), pid)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in raw.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def run_eval(cfg):
    from data import build_test_dataloader
    from engine import evaluate_model
    loader, num_query, _ = build_test_dataloader(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, 6, 3)
    metrics, _ = evaluate_model(cfg, model, loader, num_query, torch.device("cpu"), progress=False)
    # The stand-in refuses CPU tensors as NCCL does: a group of it alone cannot gather the features.
    cuda_only = dist.new_group(backend=f"cuda:{comm.CUDA_BACKEND}")
    try:
        dist.all_gather([torch.zeros(1), torch.zeros(1)], torch.ones(1), group=cuda_only)
        refused = ""
    except RuntimeError as e:
        refused = str(e)
    return {"metrics": {k: v for k, v in metrics.items() if k != "eval_seconds"}, "cuda_only_group": refused}


def ddp_step(cfg):
    rank, world = comm.get_rank(), comm.get_world_size()
    images, pid, cams = global_batch(cfg)
    share = slice(rank * len(pid) // world, (rank + 1) * len(pid) // world)  # this rank's identities
    losses, grads = training_terms(cfg, {m: x[share] for m, x in images.items()}, pid[share], cams[share],
                                   wrap=nn.parallel.DistributedDataParallel)
    for v in losses.values():
        dist.all_reduce(v)
        v /= world
    return {"losses": {k: v.item() for k, v in losses.items()},
            "grads": {k: v.flatten().tolist() for k, v in grads.items()}}


def resume_rng(cfg):
    """Each rank saves its random state as a training checkpoint does, draws, and restores it from the file."""
    from engine.trainer import restore_rng, training_state
    from utils.checkpoint import rng_state
    from utils.seed import set_seed
    rank = comm.get_rank()
    set_seed(cfg.SOLVER.SEED + rank)
    model = nn.Linear(2, 2)  # draws from the stream, as building the model does
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    path = os.path.join(cfg.OUTPUT_DIR, "last.pth")
    state = training_state(model, optimizer, scheduler, None, 1, {}, cfg, rank_rngs=comm.all_gather_object(rng_state()))
    if rank == 0:
        torch.save(state, path)
    expected = torch.rand(3).tolist()
    comm.synchronize()
    set_seed(999)
    restore_rng(torch.load(path, weights_only=False), path)
    return {"expected": expected, "resumed": torch.rand(3).tolist()}


def main():
    out_dir, opts = sys.argv[1], sys.argv[2:]
    comm.CUDA_BACKEND = "gloo"
    cfg = load_config("", opts)
    torch.cuda.set_device = lambda device: None  # no GPU: only the process group is started as on CUDA
    comm.init_distributed(torch.device("cuda", comm.local_rank()))
    steps = {}
    for gather in ("yes", "no"):
        c = cfg.clone()
        c.defrost()
        c.SOLVER.GATHER_EMBEDDINGS = gather == "yes"
        steps[gather] = ddp_step(c)
    result = {"eval": run_eval(cfg), "ddp_step": steps, "rng": resume_rng(cfg)}
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    comm.cleanup()


if __name__ == "__main__":
    main()
