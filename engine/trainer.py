"""The training loop: epochs of P x K batches, periodic evaluation, resumable checkpoints."""
import json
import logging
import math
import os
import time

import torch
from tqdm import tqdm

from modeling import MODALITIES
from utils import comm
from utils.checkpoint import atomic_save, rng_state, set_rng_state

from .inference import autocast_context, evaluate_model, format_metrics

logger = logging.getLogger("signal.train")

METRIC_KEYS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


class NonFiniteLossError(RuntimeError):
    pass


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def training_state(model, optimizer, scheduler, scaler, epoch, best, cfg):
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "best": best, "rng": rng_state(), "config": cfg.dump()}


def resume_from(path, model, optimizer, scheduler, scaler):
    """Restore a training checkpoint; returns (next epoch, best metrics)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch") if k not in state]
    if missing:
        raise RuntimeError(f"{path} is not a resumable training checkpoint (missing {missing})")
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if state.get("rng"):
        set_rng_state(state["rng"])
    logger.info("Resumed from %s (completed epoch %d)", path, state["epoch"])
    return state["epoch"] + 1, state.get("best")


def make_grad_scaler(device, amp):
    """The gradient scaler of fp16 autocast on CUDA (the official recipe), else None."""
    if device.type != "cuda" or amp != "fp16":
        return None
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def train_step(model, batch, loss_fn, optimizer, device, amp="none", scaler=None):
    """One optimisation step on a training batch (``RGB``/``NI``/``TI`` images, ``pid``, ``camid``): forward
    and loss terms under autocast, backward (scaled when ``scaler`` is given) and the optimizer step.
    Returns the dict of named, weighted loss terms."""
    images = {m: batch[m].to(device, non_blocking=True) for m in MODALITIES}
    target = batch["pid"].to(device, non_blocking=True)
    cams = batch["camid"].to(device, non_blocking=True)
    with autocast_context(device, amp):
        outputs = model(images, cam_label=cams)
        losses = loss_fn(outputs, target)
        loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return losses


def do_train(cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device,
             scaler=None, start_epoch=1, best=None):
    """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS. Writes ``last.pth``, ``best.pth`` and
    ``metrics.jsonl`` to OUTPUT_DIR (main process only). ``scaler``: a GradScaler for fp16 on CUDA.
    Returns (per-epoch records, best metrics)."""
    s = cfg.SOLVER
    out_dir = cfg.OUTPUT_DIR
    check_every_step = device.type == "cpu"
    best = best or {"mAP": -1.0}
    records = []
    main = comm.is_main_process()
    for epoch in range(start_epoch, s.MAX_EPOCHS + 1):
        model.train()
        train_loader.sampler.set_epoch(epoch)
        scheduler.step(epoch)
        sums, n_iter, t0 = {}, 0, time.time()
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{s.MAX_EPOCHS}", leave=False, disable=not main)
        for batch in bar:
            losses = train_step(model, batch, loss_fn, optimizer, device, s.AMP, scaler)
            n_iter += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            if check_every_step or n_iter % s.LOG_PERIOD == 0:
                values = {k: float(v.detach()) for k, v in losses.items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, iteration {n_iter}: {values}")
                if n_iter % s.LOG_PERIOD == 0:
                    bar.set_postfix(loss=f"{sum(values.values()):.3f}")
                    logger.info("Epoch[%d] Iteration[%d/%d] loss %.4f (%s), lr %.2e", epoch, n_iter,
                                len(train_loader), sum(values.values()),
                                ", ".join(f"{k} {v:.4f}" for k, v in values.items()), optimizer.param_groups[0]["lr"])
        if n_iter == 0:
            raise RuntimeError("the training loader produced no batch: too few identities or samples for "
                               "SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE")
        elapsed = time.time() - t0
        # DDP syncs gradients, not the BatchNorm statistics each rank updates locally: take rank 0's.
        comm.broadcast_buffers(unwrap(model))
        means = {k: round(float(v) / n_iter, 5) for k, v in sums.items()}
        lr = optimizer.param_groups[0]["lr"]
        record = {"epoch": epoch, "loss": round(sum(means.values()), 5), **means, "lr": lr,
                  "seconds": round(elapsed, 2), "samples_per_s": round(n_iter * train_loader.batch_size / elapsed, 1)}
        logger.info("Epoch %d done: loss %.4f (%s), lr %.2e, %.1fs, %.1f samples/s", epoch, record["loss"],
                    ", ".join(f"{k} {v:.4f}" for k, v in means.items()), lr, elapsed, record["samples_per_s"])
        if epoch % s.EVAL_PERIOD == 0 or epoch == s.MAX_EPOCHS:
            metrics, _ = evaluate_model(cfg, unwrap(model), test_loader, num_query, device)
            record.update({k: metrics[k] for k in METRIC_KEYS})
            logger.info("Validation epoch %d: %s", epoch, format_metrics(metrics))
            if metrics["mAP"] > best["mAP"]:
                best = {"epoch": epoch, **{k: metrics[k] for k in METRIC_KEYS}}
                if main:
                    atomic_save({"model": unwrap(model).state_dict(), "epoch": epoch, "metrics": best},
                                os.path.join(out_dir, "best.pth"))
            logger.info("Best so far (epoch %d): mAP %.1f%%, Rank-1 %.1f%%", best["epoch"], 100 * best["mAP"],
                        100 * best["Rank-1"])
        if main:
            atomic_save(training_state(model, optimizer, scheduler, scaler, epoch, best, cfg),
                        os.path.join(out_dir, "last.pth"))
            if s.CHECKPOINT_PERIOD and epoch % s.CHECKPOINT_PERIOD == 0:
                atomic_save({"model": unwrap(model).state_dict(), "epoch": epoch},
                            os.path.join(out_dir, f"{cfg.MODEL.NAME}_{epoch}.pth"))
            with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        records.append(record)
        comm.synchronize()
    return records, best
