"""Feature extraction and evaluation."""
import logging
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from data.datasets import dataset_of
from modeling import MODALITIES
from utils import comm
from utils.metrics import METRIC_NAMES, Evaluator

from .amp import amp_mode, autocast_context

logger = logging.getLogger("signal.eval")

_MISS = {"r": ("RGB",), "n": ("NI",), "t": ("TI",), "rn": ("RGB", "NI"), "rt": ("RGB", "TI"), "nt": ("NI", "TI")}


def apply_missing(images, miss):
    """Zero the (normalised) input images of the modalities named by ``miss`` (r, n, t, rn, rt, nt)."""
    if not miss:
        return images
    if miss not in _MISS:
        raise ValueError(f"TEST.MISS must be one of {sorted(_MISS)} or empty, got {miss!r}")
    return {m: torch.zeros_like(x) if m in _MISS[miss] else x for m, x in images.items()}


@torch.no_grad()
def extract(model, loader, device, miss="", amp="none", evaluator=None, progress=True):
    """Run the eval model over ``loader``; features go to ``evaluator`` (returned).

    ``miss`` may also be a list of settings with ``evaluator`` a dict of evaluators keyed by them: every
    batch is then loaded once and encoded once per setting."""
    model.eval()
    settings = miss if isinstance(miss, (list, tuple)) else [miss]
    evaluators = evaluator if isinstance(evaluator, dict) else {settings[0]: evaluator}
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress or not comm.is_main_process()):
        full = {m: batch[m].to(device, non_blocking=True) for m in MODALITIES}
        cams = batch["camid"].to(device, non_blocking=True)
        for setting in settings:
            with autocast_context(device, amp):
                feat = model(apply_missing(full, setting), cam_label=cams)
            evaluators[setting].process(feat, batch["pid"].numpy(), batch["camid"].numpy(),
                                        batch["sceneid"].numpy(), batch["index"].numpy())
    return evaluator


def build_evaluator(cfg, num_query):
    t = cfg.TEST
    rerank = (t.RE_RANKING_K1, t.RE_RANKING_K2, t.RE_RANKING_LAMBDA) if t.RE_RANKING else None
    return Evaluator(num_query, use_scenes=dataset_of(cfg).protocol_for(cfg) == "scene", rerank=rerank)


def _shard(loader):
    """This rank's strided share of ``loader``'s samples (the whole loader at world size 1)."""
    world, rank = comm.get_world_size(), comm.get_rank()
    if world == 1:
        return loader
    subset = Subset(loader.dataset, range(rank, len(loader.dataset), world))
    # Each rank reads 1 / world of the samples: 1 / world of the workers (at least one), so the machine runs as
    # many decoding processes for evaluation as one process would, next to the training loaders' workers.
    # Its own generator: the iterator draws nothing from the global random stream.
    workers = -(-loader.num_workers // world)
    return DataLoader(subset, batch_size=loader.batch_size, shuffle=False, num_workers=workers,
                      pin_memory=loader.pin_memory, generator=torch.Generator())


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

    ``miss`` (default TEST.MISS) zeroes the inputs of those modalities; 'all' evaluates the full input
    (training uses it for model selection; ``evaluate_missing`` gives the seven-setting table).
    Under torch.distributed every rank extracts the features of its share of the samples; they are
    gathered and every rank returns the same metrics."""
    start = time.time()
    miss = cfg.TEST.MISS if miss is None else miss
    miss = "" if miss == "all" else miss
    ev = extract(model, _shard(loader), device, miss, amp_mode(cfg, device), build_evaluator(cfg, num_query),
                 progress and cfg.LOG.PROGRESS_BARS)
    metrics = _gather(ev).evaluate()
    metrics["eval_seconds"] = round(time.time() - start, 2)
    return metrics, ev


# The full input and the six missing-modality settings, in the order of the papers' tables.
MISS_SETTINGS = ("none", "r", "n", "t", "rn", "rt", "nt")
MISS_NAMES = {"none": "Full", "r": "M (RGB)", "n": "M (NIR)", "t": "M (TIR)", "rn": "M (RGB+NIR)",
              "rt": "M (RGB+TIR)", "nt": "M (NIR+TIR)"}


def evaluate_missing(cfg, model, loader, num_query, device, progress=True):
    """``TEST.MISS all``: metrics of the full input and of the six missing-modality settings, from one pass
    over the data (each batch is loaded once and encoded once per setting), plus ``average`` over the six
    missing settings. Returns ({setting: metrics}, evaluator of the full input)."""
    start = time.time()
    settings = [("" if s == "none" else s) for s in MISS_SETTINGS]
    evaluators = {s: build_evaluator(cfg, num_query) for s in settings}
    extract(model, _shard(loader), device, settings, amp_mode(cfg, device), evaluators,
            progress and cfg.LOG.PROGRESS_BARS)
    results = {("none" if s == "" else s): _gather(ev).evaluate() for s, ev in evaluators.items()}
    keys = [k for k in results["none"] if k != "num_valid_queries"]
    results["average"] = {k: float(np.mean([results[s][k] for s in MISS_SETTINGS[1:]])) for k in keys}
    results["eval_seconds"] = round(time.time() - start, 2)
    return results, evaluators[""]


def missing_table(results, digits=1):
    """The markdown table of ``evaluate_missing`` in the papers' layout: one column per setting plus the
    average of the six missing settings, one row per metric (percent)."""
    cols = list(MISS_SETTINGS) + ["average"]
    lines = ["| metric | " + " | ".join(MISS_NAMES.get(c, "Average (6 missing)") for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for k in METRIC_NAMES:
        lines.append(f"| {k} | " + " | ".join(f"{100 * results[c][k]:.{digits}f}" for c in cols) + " |")
    return "\n".join(lines)


def format_metrics(m):
    return (f"mAP: {m['mAP']:.1%}  Rank-1: {m['Rank-1']:.1%}  Rank-5: {m['Rank-5']:.1%}  "
            f"Rank-10: {m['Rank-10']:.1%}  mINP: {m['mINP']:.1%}")
