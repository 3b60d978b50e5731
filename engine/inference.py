"""Feature extraction and evaluation."""
import logging
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from data.datasets import uses_scenes
from modeling import MODALITIES
from utils import comm
from utils.metrics import Evaluator

logger = logging.getLogger("signal.eval")

_MISS = {"r": ("RGB",), "n": ("NI",), "t": ("TI",), "rn": ("RGB", "NI"), "rt": ("RGB", "TI"), "nt": ("NI", "TI")}


def apply_missing(images, miss):
    """Zero the (normalised) input images of the modalities named by ``miss`` (r, n, t, rn, rt, nt)."""
    if not miss:
        return images
    if miss not in _MISS:
        raise ValueError(f"TEST.MISS must be one of {sorted(_MISS)} or empty, got {miss!r}")
    return {m: torch.zeros_like(x) if m in _MISS[miss] else x for m, x in images.items()}


def autocast_context(device, amp):
    if device.type == "cuda" and amp != "none":
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def extract(model, loader, device, miss="", amp="none", evaluator=None, progress=True):
    """Run the eval model over ``loader``; features go to ``evaluator`` (returned)."""
    model.eval()
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress or not comm.is_main_process()):
        images = apply_missing({m: batch[m].to(device, non_blocking=True) for m in MODALITIES}, miss)
        with autocast_context(device, amp):
            feat = model(images, cam_label=batch["camid"].to(device, non_blocking=True))
        evaluator.process(feat, batch["pid"].numpy(), batch["camid"].numpy(), batch["sceneid"].numpy(),
                          batch["index"].numpy())
    return evaluator


def build_evaluator(cfg, num_query):
    t = cfg.TEST
    rerank = (t.RE_RANKING_K1, t.RE_RANKING_K2, t.RE_RANKING_LAMBDA) if t.RE_RANKING else None
    return Evaluator(num_query, use_scenes=uses_scenes(cfg.DATASETS.NAMES), rerank=rerank)


def _shard(loader):
    """This rank's strided share of ``loader``'s samples (the whole loader at world size 1)."""
    world, rank = comm.get_world_size(), comm.get_rank()
    if world == 1:
        return loader
    subset = Subset(loader.dataset, range(rank, len(loader.dataset), world))
    return DataLoader(subset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory)


def _gather(ev):
    """Concatenate every rank's features and labels on all ranks, in dataset order."""
    if comm.get_world_size() == 1:
        return ev
    feats, pids, camids, scenes = ev.arrays()
    index = torch.as_tensor(np.concatenate(ev.indices))
    parts = [comm.all_gather_tensor(t) for t in (feats, torch.as_tensor(pids), torch.as_tensor(camids),
                                                  torch.as_tensor(scenes), index)]
    order = torch.argsort(parts[-1])
    ev.reset()
    ev.process(parts[0][order], *(p[order].numpy() for p in parts[1:]))
    return ev


def evaluate_model(cfg, model, loader, num_query, device, miss=None, progress=True):
    """Metrics dict (mAP, Rank-1/5/10, mINP, eval_seconds) of ``model`` on ``loader``.

    Under torch.distributed every rank extracts the features of its share of the samples; they are
    gathered and every rank returns the same metrics."""
    start = time.time()
    miss = cfg.TEST.MISS if miss is None else miss
    ev = extract(model, _shard(loader), device, miss, cfg.SOLVER.AMP, build_evaluator(cfg, num_query), progress)
    metrics = _gather(ev).evaluate()
    metrics["eval_seconds"] = round(time.time() - start, 2)
    return metrics, ev


def format_metrics(m):
    return (f"mAP: {m['mAP']:.1%}  Rank-1: {m['Rank-1']:.1%}  Rank-5: {m['Rank-5']:.1%}  "
            f"Rank-10: {m['Rank-10']:.1%}  mINP: {m['mINP']:.1%}")
