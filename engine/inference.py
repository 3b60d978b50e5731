"""Feature extraction and evaluation."""
import logging
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from data import to_device
from data.datasets import dataset_of
from utils import comm
from utils.metrics import METRIC_NAMES, Evaluator
from utils.modalities import MODALITIES, miss_label, miss_settings

from .amp import amp_mode, autocast_context
from .checkpoints import unwrap

logger = logging.getLogger("signal.eval")


def model_modalities(model):
    """The modalities ``model`` reads, in batch order (through a DistributedDataParallel wrapper)."""
    return tuple(getattr(unwrap(model), "modalities", MODALITIES))


def _missing(images, miss):
    """The modalities setting ``miss`` names missing among those of ``images`` (ValueError listing the
    settings when it names none of them)."""
    settings = miss_settings(tuple(images))
    if miss not in settings:
        raise ValueError(f"TEST.MISS must be one of {list(settings)} or empty for the modalities "
                         f"{', '.join(images)}, got {miss!r}")
    return settings[miss]


def apply_missing(images, miss):
    """Zero the (normalised) input images of the modalities named by ``miss`` (the letters of
    ``utils.modalities.miss_settings`` for the modalities of ``images``: r, n, t, rn, rt, nt for RGB/NI/TI)."""
    if not miss:
        return images
    gone = _missing(images, miss)
    return {m: torch.zeros_like(x) if m in gone else x for m, x in images.items()}


# How a method builds a feature with modalities missing (``model.missing_rule``): Signal's and DeMo's code zero
# the missing inputs and encode all of them; MDReID's encodes the present modalities only.
MISSING_RULES = {"zero": "missing modalities' inputs zero-filled",
                 "present": "feature from the present modalities only"}


def missing_rule(model):
    """'zero' or 'present': how ``model`` encodes a sample with modalities missing (``MISSING_RULES``)."""
    rule = getattr(unwrap(model), "missing_rule", "zero")
    if rule not in MISSING_RULES:
        raise ValueError(f"{type(model).__name__}.missing_rule must be one of {list(MISSING_RULES)}, got {rule!r}")
    return rule


def encode(model, images, cams, miss=""):
    """The eval feature of ``images`` with the modalities of setting ``miss`` missing, by the model's rule:
    zero-filled inputs, or ``model(images, cam_label, missing=(...))`` for a model that encodes the present
    modalities only (``missing_rule = 'present'``)."""
    if miss and missing_rule(model) == "present":
        return model(images, cam_label=cams, missing=_missing(images, miss))
    return model(apply_missing(images, miss), cam_label=cams)


@torch.no_grad()
def extract(model, loader, device, miss="", amp="none", evaluator=None, progress=True):
    """Run the eval model over ``loader``; features go to ``evaluator`` (returned).

    ``miss`` may also be a list of settings with ``evaluator`` a dict of evaluators keyed by them: every
    batch is then loaded once and encoded once per setting."""
    model.eval()
    settings = miss if isinstance(miss, (list, tuple)) else [miss]
    evaluators = evaluator if isinstance(evaluator, dict) else {settings[0]: evaluator}
    modalities = model_modalities(model)
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress or not comm.is_main_process()):
        full = to_device(loader, batch, modalities, device)
        cams = batch["camid"].to(device, non_blocking=True)
        for setting in settings:
            with autocast_context(device, amp):
                feat = encode(model, full, cams, setting)
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
    if miss is None and (cfg.TEST.MISS_QUERY or cfg.TEST.MISS_GALLERY):
        return evaluate_query_gallery(cfg, model, loader, num_query, device, progress)
    miss = cfg.TEST.MISS if miss is None else miss
    miss = "" if miss in ("all", "any") else miss
    ev = extract(model, _shard(loader), device, miss, amp_mode(cfg, device), build_evaluator(cfg, num_query),
                 progress and cfg.LOG.PROGRESS_BARS)
    metrics = _gather(ev).evaluate()
    metrics["eval_seconds"] = round(time.time() - start, 2)
    return metrics, ev


def missing_settings(modalities=MODALITIES):
    """'none' (the full input) and every missing-modality setting of ``modalities``, in table order."""
    return ("none",) + tuple(miss_settings(modalities))


# The full input and the six missing-modality settings of RGB / NI / TI, in the order of the papers' tables.
MISS_SETTINGS = missing_settings()


def _extract_every_setting(cfg, model, loader, num_query, device, progress):
    """One pass over ``loader`` encoding each batch under the full input and every missing-modality setting
    of the model's modalities -> {setting name ('none', 'r', ...): the gathered evaluator}."""
    names = missing_settings(model_modalities(model))
    evaluators = {s: build_evaluator(cfg, num_query) for s in names}
    codes = {("" if s == "none" else s): ev for s, ev in evaluators.items()}
    extract(model, _shard(loader), device, list(codes), amp_mode(cfg, device), codes,
            progress and cfg.LOG.PROGRESS_BARS)
    return {s: _gather(ev) for s, ev in evaluators.items()}


def evaluate_missing(cfg, model, loader, num_query, device, progress=True):
    """``TEST.MISS all``: metrics of the full input and of every setting that leaves at least one of the
    model's modalities (six for RGB / NI / TI), from one pass over the data (each batch is loaded once and
    encoded once per setting), plus ``average`` over the missing settings. Returns ({setting: metrics},
    evaluator of the full input)."""
    start = time.time()
    gathered = _extract_every_setting(cfg, model, loader, num_query, device, progress)
    names = list(gathered)
    results = {s: ev.evaluate() for s, ev in gathered.items()}
    keys = [k for k in results["none"] if k != "num_valid_queries"]
    results["average"] = {k: float(np.mean([results[s][k] for s in names[1:]])) for k in keys}
    results["eval_seconds"] = round(time.time() - start, 2)
    return results, gathered["none"]


def missing_table(results, digits=1, modalities=MODALITIES):
    """The markdown table of ``evaluate_missing`` in the papers' layout: one column per setting of
    ``modalities`` plus the average of the missing settings, one row per metric (percent)."""
    cols = list(missing_settings(modalities))
    heads = [miss_label(c, modalities) for c in cols] + [f"Average ({len(cols) - 1} missing)"]
    cols.append("average")
    lines = ["| metric | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(cols)]
    for k in METRIC_NAMES:
        lines.append(f"| {k} | " + " | ".join(f"{100 * results[c][k]:.{digits}f}" for c in cols) + " |")
    return "\n".join(lines)


def feature_pairing(model, query_setting, gallery_setting):
    """None, or ``pair(query, gallery)`` for a model whose features differ in layout between settings of
    missing modalities (``model.pair_features``, e.g. MDReID's present-only features). A setting is a
    ``TEST.MISS`` value; the full input is '' or 'none'."""
    raw = unwrap(model)
    if not hasattr(raw, "pair_features") or query_setting == gallery_setting:
        return None
    settings = miss_settings(model_modalities(model))
    q, g = settings.get(query_setting, ()), settings.get(gallery_setting, ())
    return lambda qf, gf: raw.pair_features(qf, gf, q, g)


def evaluate_query_gallery(cfg, model, loader, num_query, device, progress=True):
    """``TEST.MISS_QUERY`` / ``TEST.MISS_GALLERY`` (MDReID's protocol): the queries encoded with one setting
    of missing modalities and the gallery with another, from one pass. Returns (metrics, the query side's
    evaluator)."""
    start = time.time()
    q, g = cfg.TEST.MISS_QUERY, cfg.TEST.MISS_GALLERY
    evaluators = {s: build_evaluator(cfg, num_query) for s in dict.fromkeys((q, g))}
    extract(model, _shard(loader), device, list(evaluators), amp_mode(cfg, device), evaluators,
            progress and cfg.LOG.PROGRESS_BARS)
    query, gallery = _gather(evaluators[q]), _gather(evaluators[g])
    metrics = query.evaluate(gallery=gallery, pair=feature_pairing(model, q, g))
    metrics["eval_seconds"] = round(time.time() - start, 2)
    return metrics, query


def evaluate_any_to_any(cfg, model, loader, num_query, device, progress=True):
    """``TEST.MISS any``: every query setting against every gallery setting (the full input and each setting
    that leaves a modality), from one pass over the data (each batch loaded once, encoded once per setting).
    Returns ({query setting: {gallery setting: metrics}}, with ``average`` over the pairs where both sides
    miss a modality, ``rule`` (how the model encodes missing modalities) and ``eval_seconds``; the evaluator
    of the full input)."""
    start = time.time()
    gathered = _extract_every_setting(cfg, model, loader, num_query, device, progress)
    names = list(gathered)
    table = {q: {g: gathered[q].evaluate(gallery=gathered[g], pair=feature_pairing(model, q, g)) for g in names}
             for q in names}
    pairs = [table[q][g] for q in names[1:] for g in names[1:]]
    keys = [k for k in table["none"]["none"] if k != "num_valid_queries"]
    results = {"table": table, "average": {k: float(np.mean([m[k] for m in pairs])) for k in keys},
               "rule": MISSING_RULES[missing_rule(model)], "eval_seconds": round(time.time() - start, 2)}
    return results, gathered["none"]


def any_to_any_table(results, metric="mAP", digits=1, modalities=MODALITIES):
    """The markdown table of ``evaluate_any_to_any``: one row per query setting, one column per gallery
    setting, ``metric`` in percent, and the rule the model encodes missing modalities by."""
    names = list(missing_settings(modalities))
    lines = [f"{metric} (percent), query (rows) x gallery (columns); {results['rule']}",
             "| query \\ gallery | " + " | ".join(miss_label(g, modalities) for g in names) + " |",
             "|---|" + "---:|" * len(names)]
    for q in names:
        lines.append(f"| {miss_label(q, modalities)} | "
                     + " | ".join(f"{100 * results['table'][q][g][metric]:.{digits}f}" for g in names) + " |")
    return "\n".join(lines)


def format_metrics(m):
    return (f"mAP: {m['mAP']:.1%}  Rank-1: {m['Rank-1']:.1%}  Rank-5: {m['Rank-5']:.1%}  "
            f"Rank-10: {m['Rank-10']:.1%}  mINP: {m['mINP']:.1%}")
