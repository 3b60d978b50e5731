"""Evaluate a checkpoint: python test.py --config_file configs/RGBNT201/Signal.yml TEST.WEIGHT model.pth"""
import os
import re
import tempfile

import numpy as np
import yaml

from data import build_test_dataloader
from engine import (MISSING_RULES, any_to_any_table, evaluate_any_to_any, evaluate_missing, evaluate_model,
                    format_metrics, missing_rule, missing_table)
from engine.setup import SetupError, argument_parser, default_setup, run_cli
from modeling import load_eval_model
from utils import comm
from utils.checkpoint import OutputError, atomic_write, atomic_write_json


def evaluation_hash(cfg):
    """Eight hex digits of the evaluation-relevant config: the model keys, the data (folders as absolute
    paths), the test settings, the test input size and normalisation and the autocast precision."""
    import hashlib
    import json

    from config.setup import flatten
    from utils.keyfacts import keys_with
    flat = flatten(cfg)
    paths = keys_with(cfg, "path")
    relevant = {k: os.path.realpath(os.path.expanduser(flat[k])) if k in paths and flat[k] else flat[k]
                for k in sorted(keys_with(cfg, "evaluated"))}  # the EVAL, MODEL, SHAPE and DATA keys
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:8]


def result_name(cfg):
    """``test_<checkpoint>_<dataset>[_miss-<m> | _miss-q<m>-g<m>][_rerank<k1>-<k2>-<lambda>]_<hash>``: one name per checkpoint
    and evaluation setting (``evaluation_hash``: another data folder, camera rule or input size is another
    file), never that of a training record. A checkpoint outside OUTPUT_DIR is named with its folder
    (``run1-best``)."""
    weight = os.path.abspath(cfg.TEST.WEIGHT)
    name = os.path.splitext(os.path.basename(weight))[0]
    folder = os.path.dirname(weight)
    if os.path.realpath(folder) != os.path.realpath(cfg.OUTPUT_DIR):
        name = f"{os.path.basename(folder)}-{name}"
    t = cfg.TEST
    tag = f"test_{name}_{cfg.DATASETS.NAMES}"
    if t.MISS:
        tag += f"_miss-{t.MISS}"
    if t.MISS_QUERY or t.MISS_GALLERY:
        tag += f"_miss-q{t.MISS_QUERY or 'none'}-g{t.MISS_GALLERY or 'none'}"
    if t.RE_RANKING:
        tag += f"_rerank{t.RE_RANKING_K1}-{t.RE_RANKING_K2}-{t.RE_RANKING_LAMBDA:g}"
    tag += "_" + evaluation_hash(cfg)
    return re.sub(r"[^\w.+-]", "_", tag)


# --save-features without a path: the features go next to the result file, into OUTPUT_DIR.
FEATURES_NEXT_TO_RESULT = "<next to the result>"


def parse_args(argv=None):
    p = argument_parser("Evaluate Signal on a multi-modal ReID benchmark")
    p.add_argument("--save-features", nargs="?", const=FEATURES_NEXT_TO_RESULT, default="", metavar="PATH",
                   help="save query/gallery features; to PATH (.npz) when given, else next to the result file: "
                        "OUTPUT_DIR/test_<...>.npz")
    return p.parse_intermixed_args(argv)


def features_path(path, cfg):
    """The --save-features file (``.npz`` added when missing; without a path, the result file's name in
    OUTPUT_DIR), checked writable before any work."""
    if path == FEATURES_NEXT_TO_RESULT:
        path = os.path.join(cfg.OUTPUT_DIR, result_name(cfg))
    elif re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", path) and not os.path.exists(path):
        raise SetupError(f"--save-features {path}: that is a config key, not a file; give the features file "
                         f"after --save-features (or nothing, for OUTPUT_DIR), then the KEY VALUE pairs")
    if not path.endswith(".npz"):
        path += ".npz"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"--save-features: cannot write to {folder}: {e.strerror or e}") from None
    return path


def main():
    args = parse_args()
    cfg, logger, device, _ = default_setup(args, "test_log.txt")
    if not cfg.TEST.WEIGHT:
        raise SetupError("test.py needs TEST.WEIGHT path/to/model.pth")
    if not os.path.isfile(cfg.TEST.WEIGHT):
        raise FileNotFoundError(f"TEST.WEIGHT: no checkpoint at {cfg.TEST.WEIGHT}")
    with comm.same_outcome():
        feats_out = features_path(args.save_features, cfg) if args.save_features and comm.is_main_process() else ""
    test_loader, num_query, dataset = build_test_dataloader(cfg)
    # The model is sized from the checkpoint, not from the data: evaluation needs no training split, and a
    # model trained on one benchmark can be evaluated on another.
    model, num_cameras = load_eval_model(cfg, cfg.TEST.WEIGHT, dataset.modalities)
    if num_cameras and dataset.num_cameras > num_cameras and cfg.TEST.CAMERA_EMBEDDING == "index":
        logger.warning("%s has %d cameras, the model's camera table %d: cameras %d and above get the table's "
                       "mean (TEST.CAMERA_EMBEDDING mean gives every camera the mean)", dataset.name,
                       dataset.num_cameras, num_cameras, num_cameras)
    model.to(device)
    setting = {"weight": os.path.abspath(cfg.TEST.WEIGHT), "dataset": cfg.DATASETS.NAMES,
               "miss": cfg.TEST.MISS or "none", "re_ranking": bool(cfg.TEST.RE_RANKING)}
    if cfg.TEST.MISS_QUERY or cfg.TEST.MISS_GALLERY:
        setting.update(miss_query=cfg.TEST.MISS_QUERY or "none", miss_gallery=cfg.TEST.MISS_GALLERY or "none")
    if cfg.TEST.MISS or cfg.TEST.MISS_QUERY or cfg.TEST.MISS_GALLERY:
        setting["missing_rule"] = MISSING_RULES[missing_rule(model)]
    if cfg.TEST.MISS == "any":
        metrics, ev = evaluate_any_to_any(cfg, model, test_loader, num_query, device)
        logger.info("%s | any-to-any missing modalities:\n%s\n%s", ", ".join(f"{k}={v}" for k, v in
                    setting.items()), any_to_any_table(metrics, "mAP", modalities=model.modalities),
                    any_to_any_table(metrics, "Rank-1", modalities=model.modalities))
    elif cfg.TEST.MISS == "all":
        metrics, ev = evaluate_missing(cfg, model, test_loader, num_query, device)
        logger.info("%s | full input and missing modalities (percent):\n%s", ", ".join(f"{k}={v}" for k, v in
                    setting.items()), missing_table(metrics, modalities=model.modalities))
    else:
        metrics, ev = evaluate_model(cfg, model, test_loader, num_query, device)
        logger.info("%s | %s", ", ".join(f"{k}={v}" for k, v in setting.items()), format_metrics(metrics))
    if not comm.is_main_process():  # under torchrun every rank holds the same metrics: rank 0 writes them
        return
    out = os.path.join(cfg.OUTPUT_DIR, result_name(cfg) + ".json")
    atomic_write_json({**setting, "evaluation_hash": evaluation_hash(cfg), **metrics,
                       "config": yaml.safe_load(cfg.dump())}, out)
    logger.info("Wrote %s", out)
    if feats_out:
        feats, pids, camids, scenes = ev.arrays()
        samples = test_loader.dataset.samples
        paths = np.array([samples[i].paths[0] for i in np.concatenate(ev.indices)])
        arrays = dict(features=feats.numpy(), pids=pids, camids=camids, sceneids=scenes, paths=paths,
                      num_query=num_query, gallery_is_query=len(feats) == num_query)
        atomic_write(feats_out, lambda f: np.savez(f, **arrays))
        logger.info("Saved features to %s", feats_out)


if __name__ == "__main__":
    run_cli(main)
