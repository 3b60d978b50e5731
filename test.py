"""Evaluate a checkpoint: python test.py --config_file configs/RGBNT201/Signal.yml TEST.WEIGHT model.pth"""
import os

import numpy as np

from data import build_dataloaders
from engine import evaluate_model, format_metrics
from engine.setup import default_setup, parse_args, run_cli
from modeling import build_model, load_weights
from utils.checkpoint import atomic_write_json


def main():
    args = parse_args("Evaluate Signal on a multi-modal ReID benchmark")
    cfg, logger, device = default_setup(args, "test_log.txt")
    if not cfg.TEST.WEIGHT:
        raise SystemExit("test.py needs TEST.WEIGHT path/to/model.pth")
    _, test_loader, num_query, num_classes, num_cameras = build_dataloaders(cfg)
    model = build_model(cfg, num_classes, num_cameras, pretrained=False)
    load_weights(model, cfg.TEST.WEIGHT)
    model.to(device)
    metrics, ev = evaluate_model(cfg, model, test_loader, num_query, device)
    setting = {"weight": cfg.TEST.WEIGHT, "dataset": cfg.DATASETS.NAMES, "miss": cfg.TEST.MISS or "none",
               "re_ranking": bool(cfg.TEST.RE_RANKING)}
    logger.info("%s | %s", ", ".join(f"{k}={v}" for k, v in setting.items()), format_metrics(metrics))
    tag = f"test_metrics{'_miss-' + cfg.TEST.MISS if cfg.TEST.MISS else ''}{'_rerank' if cfg.TEST.RE_RANKING else ''}"
    atomic_write_json({**setting, **metrics}, os.path.join(cfg.OUTPUT_DIR, tag + ".json"))
    if args.save_features:
        feats, pids, camids, scenes = ev.arrays()
        samples = test_loader.dataset.samples
        paths = np.array([samples[i].paths[0] for i in np.concatenate(ev.indices)])
        np.savez(args.save_features, features=feats.numpy(), pids=pids, camids=camids, sceneids=scenes,
                 paths=paths, num_query=num_query, gallery_is_query=len(feats) == num_query)
        logger.info("Saved features to %s", args.save_features)


if __name__ == "__main__":
    run_cli(main)
