"""Train Signal: python train.py --config_file configs/RGBNT201/Signal.yml [KEY VALUE ...] [--resume]"""
import json
import os

import torch

from data import build_dataloaders
from engine import Trainer, amp_mode, evaluate_model, format_metrics, make_grad_scaler, resume_from, unwrap
from engine.preemption import stop_signals
from engine.rundir import read_metrics
from engine.trainer import settle_pending_eval
from engine.setup import argument_parser, default_setup, run_cli, write_config
from modeling import build_loss, build_model, load_weights
from solver import build_optimizer, build_scheduler
from utils import comm
from utils.checkpoint import atomic_write_json


def parse_args(argv=None):
    p = argument_parser("Train Signal for multi-modal object ReID")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUTPUT_DIR/last.pth")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the training run already in OUTPUT_DIR and start a fresh one")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: continue with this config key changed against the checkpoint "
                        "(repeatable, or comma-separated; 'all' allows every change)")
    args = p.parse_intermixed_args(argv)
    if args.allow_change and not args.resume:
        p.error("--allow-change only applies with --resume (it allows config changes against the checkpoint "
                "being continued)")
    return args


def main():
    args = parse_args()
    cfg, logger, device, run = default_setup(args, "train_log.txt", training=True)
    try:
        train(cfg, logger, device, run)
    finally:
        run.release()


def train(cfg, logger, device, run):
    """Train in the prepared run folder (``run``: its lock and, when resuming, the checkpoint)."""
    state = run.state
    if state is not None:
        settle_pending_eval(state, cfg.OUTPUT_DIR)
    if state is not None and state["epoch"] >= cfg.SOLVER.MAX_EPOCHS and not state.get("pending_eval"):
        logger.info("The run in %s is finished (epoch %d of SOLVER.MAX_EPOCHS %d): nothing to train. To train "
                    "it longer, raise SOLVER.MAX_EPOCHS and pass --allow-change SOLVER.MAX_EPOCHS.",
                    cfg.OUTPUT_DIR, state["epoch"], cfg.SOLVER.MAX_EPOCHS)
        return
    train_loader, test_loader, num_query, num_classes, num_cameras = build_dataloaders(cfg)
    logger.info("\n%s", train_loader.reid_dataset.summary())
    model = build_model(cfg, num_classes, num_cameras, modalities=train_loader.reid_dataset.modalities).to(device)
    logger.info("Model: %s, %.2fM parameters, test feature %d-d", cfg.MODEL.TRANSFORMER_TYPE,
                sum(p.numel() for p in model.parameters()) / 1e6, model.feat_dim)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = make_grad_scaler(device, amp_mode(cfg, device))
    loss_fn = build_loss(cfg)
    start_epoch, best, records, pending, partial, summary, hook_states = 1, None, [], False, None, {}, {}
    summary_path = os.path.join(cfg.OUTPUT_DIR, "summary.json")
    if state is not None:
        start_epoch, best, records, pending, partial = resume_from(state, model, optimizer, scheduler, scaler,
                                                                   os.path.join(cfg.OUTPUT_DIR, "last.pth"))
        hook_states = state.get("hooks") or {}
        with comm.same_outcome():
            write_config(cfg)  # the checkpoint loaded into this config's model: the run continues with it
        if "records" not in state:  # a checkpoint of an earlier version: keep metrics.jsonl's records
            records = read_metrics(cfg.OUTPUT_DIR, state["epoch"])
        if os.path.isfile(summary_path):
            with open(summary_path) as f:
                summary = {k: v for k, v in json.load(f).items() if k == "before_training"}
        del state, run.state
    if comm.get_world_size() > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.MODEL.COMPILE:  # after the DDP wrap: all-reduce overlaps the backward, SyncBN stays outside the graph
        model.compile()
    if cfg.TEST.EVAL_BEFORE_TRAIN and start_epoch == 1 and not partial:
        before, _ = evaluate_model(cfg, unwrap(model), test_loader, num_query, device)
        logger.info("Before training: %s", format_metrics(before))
        summary["before_training"] = before
    # Model selection: on the held-out validation identities when DATASETS.VAL_IDS is set, else on the
    # test set (official recipe).
    eval_loader, eval_nq = test_loader, num_query
    if train_loader.val_loader is not None:
        eval_loader, eval_nq = train_loader.val_loader, train_loader.val_num_query
        logger.info("Selecting the best epoch on %d held-out validation samples", eval_nq)
    with stop_signals():  # SIGTERM / SIGUSR1: save mid-epoch and stop (engine/preemption.py)
        trainer = Trainer(cfg, model, train_loader, eval_loader, eval_nq, optimizer, scheduler, loss_fn, device,
                          scaler=scaler, start_epoch=start_epoch, best=best, records=records, pending_eval=pending,
                          partial=partial, hook_states=hook_states)
        records, best = trainer.train()
    if train_loader.val_loader is not None:
        raw = trainer.eval_model()
        for name in ("last", "best"):
            if name == "best":
                comm.synchronize()
                load_weights(raw, os.path.join(cfg.OUTPUT_DIR, "best.pth"))
            test_metrics, _ = evaluate_model(cfg, raw, test_loader, num_query, device)
            logger.info("Test set, %s epoch (chosen on validation): %s", name, format_metrics(test_metrics))
            summary[f"test_{name}_epoch"] = test_metrics
    if comm.is_main_process():
        evaluated = [r for r in records if "mAP" in r]
        if evaluated:
            last_rec = evaluated[-1]
            logger.info("Last epoch (%d): %s", last_rec["epoch"], format_metrics(last_rec))
            summary["last_epoch"] = last_rec
        if best and best.get("epoch"):
            logger.info("Best epoch (%d): %s", best["epoch"], format_metrics(best))
            summary["best"] = best
        atomic_write_json(summary, summary_path)


if __name__ == "__main__":
    run_cli(main)
