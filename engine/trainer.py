"""The training loop: epochs of P x K batches, periodic evaluation, resumable checkpoints."""
import logging
import math
import os
import time

import torch
from tqdm import tqdm

from modeling import MODALITIES
from utils import comm
from utils.checkpoint import (CheckpointError, atomic_save, atomic_write_jsonl, key_report, read_checkpoint,
                              rng_state, set_rng_state)
from utils.errors import SignalError
from utils.metrics import METRIC_NAMES

from . import preemption
from .amp import amp_mode, autocast_context, scaled_step
from .inference import evaluate_model, format_metrics

logger = logging.getLogger("signal.train")

METRIC_KEYS = METRIC_NAMES
# A GradScaler scale below this is logged as a warning at the end of the epoch.
LOW_LOSS_SCALE = 2 ** 8


class NonFiniteLossError(SignalError):
    pass


# What the run has saved so far (last.pth's path, its completed epoch and, when written mid-epoch, the
# iteration), for the one line printed when the run is interrupted.
SAVED = {}


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def training_state(model, optimizer, scheduler, scaler, epoch, best, cfg, records=(), pending_eval=False,
                   rank_rngs=None, partial=None):
    """Everything needed to continue the run after ``epoch``: weights, optimizer, scaler, RNG, the best
    metrics, the per-epoch records (metrics.jsonl) and whether the epoch still awaits its evaluation.
    ``rank_rngs``: the random states of every rank (torch.distributed; ``rng`` is rank 0's). ``partial``: the
    progress into epoch ``epoch + 1`` of a run stopped mid-epoch (see ``do_train``), else None."""
    rngs = list(rank_rngs) if rank_rngs else [rng_state()]
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "best": best, "rng": rngs[0], "rank_rngs": rngs, "config": cfg.dump(),
            "records": list(records), "pending_eval": pending_eval, "partial": partial}


def resume_from(state, model, optimizer, scheduler, scaler, path="last.pth"):
    """Restore a training checkpoint (a path or its loaded dict).

    The learning-rate schedule is not restored from the checkpoint: it is a function of the epoch and the
    current config, so an allowed change (a longer SOLVER.MAX_EPOCHS, another BASE_LR) applies from the next
    epoch on. For the same reason every optimizer hyper-parameter (weight decay, betas, ...) is taken from
    the current config; only the optimizer's running state (moments, step counts) comes from the checkpoint.

    Returns ``(next epoch, best metrics, per-epoch records, pending_eval, partial)``: ``partial`` is the
    progress into the next epoch of a checkpoint written mid-epoch (on a stop signal), else None."""
    if isinstance(state, str):
        path, state = state, read_checkpoint(state, "training checkpoint")
    mismatched, unexpected, missing = key_report(unwrap(model).state_dict(), state["model"])
    if mismatched or unexpected or missing:  # the data or the model differ from the run's
        found = ([f"size mismatch {m}" for m in mismatched.values()] + [f"unexpected {k}" for k in unexpected]
                 + [f"missing {k}" for k in missing])
        raise CheckpointError(f"{path} does not fit this run's model ({'; '.join(found[:3])}): the data "
                              f"(number of identities or cameras) or the model config differ from the run's; "
                              f"train into another OUTPUT_DIR with MODEL.PRETRAIN_PATH {path} to fine-tune "
                              f"from it")
    unwrap(model).load_state_dict(state["model"])
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, hyper in zip(optimizer.param_groups, fresh):
        group.update(hyper)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng(state, path)
    partial = state.get("partial")
    if partial:
        logger.info("Resumed from %s (epoch %d, after iteration %d of it)", path, partial["epoch"],
                    partial["iterations"])
    else:
        logger.info("Resumed from %s (completed epoch %d)", path, state["epoch"])
    return (state["epoch"] + 1, state.get("best"), list(state.get("records", [])), bool(state.get("pending_eval")),
            partial)


def train_step(model, batch, loss_fn, optimizer, device, amp="none", scaler=None, skipped=None):
    """One optimisation step on a training batch (``RGB``/``NI``/``TI`` images, ``pid``, ``camid``): forward
    and loss terms under autocast (``amp``: 'fp16', 'bf16' or 'none'), backward (scaled when ``scaler`` is
    given; ``skipped``: a device counter of the steps the scaler skipped, see ``engine.amp.scaled_step``) and
    the optimizer step. Returns the dict of named, weighted loss terms."""
    images = {m: batch[m].to(device, non_blocking=True) for m in MODALITIES}
    target = batch["pid"].to(device, non_blocking=True)
    cams = batch["camid"].to(device, non_blocking=True)
    with autocast_context(device, amp):
        outputs = model(images, cam_label=cams)
        losses = loss_fn(outputs, target)
        loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaled_step(scaler, optimizer, loss, skipped)
    else:
        loss.backward()
        optimizer.step()
    return losses


def better_epoch(best, epoch, metrics):
    """The best-epoch record after ``epoch`` was evaluated with ``metrics``: a strictly higher mAP wins (the
    earliest epoch keeps a tie); ``best`` itself otherwise."""
    if metrics["mAP"] > best["mAP"]:
        return {"epoch": epoch, **{k: metrics[k] for k in METRIC_KEYS}}
    return best


def settle_pending_eval(state, out_dir):
    """``last.pth`` is written once per epoch, before that epoch's evaluation, which then writes only
    ``metrics.jsonl`` (and ``best.pth``). When the checkpoint awaits an evaluation that did finish (its
    record in metrics.jsonl has the metrics), take that record and the best epoch from it, so the resumed
    run does not evaluate again. Evaluation draws nothing from the random streams, so the checkpoint's state
    is the one after the evaluation too. Updates ``state`` in place."""
    if not state.get("pending_eval") or not state.get("records"):
        return state
    from .rundir import read_metrics
    done = {r["epoch"]: r for r in read_metrics(out_dir, state["epoch"])}
    last = done.get(state["epoch"], {})
    if "mAP" not in last:
        return state
    records = state["records"][:-1] + [last]
    best = {"mAP": -1.0}
    for r in records:
        if "mAP" in r:
            best = better_epoch(best, r["epoch"], r)
    state.update(records=records, best=best, pending_eval=False)
    return state


def restore_rng(state, path="last.pth"):
    """Set this rank's random state from a training checkpoint (``rank_rngs``: one per rank; older
    checkpoints hold rank 0's as ``rng``). A rank the checkpoint has no state for keeps its seed."""
    rngs, rank = state.get("rank_rngs") or [state.get("rng")], comm.get_rank()
    if rank < len(rngs) and rngs[rank]:
        set_rng_state(rngs[rank])
    elif rank > 0:
        logger.warning("%s holds the random state of %d process(es), not of rank %d: this rank's random stream "
                       "starts from its seed (SOLVER.SEED + rank) instead of continuing", path, len(rngs), rank)


def make_writer(cfg, purge_step=None):
    """A TensorBoard SummaryWriter on OUTPUT_DIR/tensorboard (main process, LOG.TENSORBOARD, the
    tensorboard package installed), else None. ``purge_step``: a resumed run drops the events a stopped
    run logged from that step on."""
    if not cfg.LOG.TENSORBOARD or not comm.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("LOG.TENSORBOARD: the tensorboard package is not installed (pip install -r "
                    "requirements-extras.txt), so no event files are written")
        return None
    return SummaryWriter(os.path.join(cfg.OUTPUT_DIR, "tensorboard"), purge_step=purge_step)


def log_scalars(writer, prefix, values, step):
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)


def evaluates(epoch, solver):
    """Whether ``epoch`` is evaluated: every EVAL_PERIOD epochs (0: never before the last) and the last."""
    return epoch == solver.MAX_EPOCHS or (solver.EVAL_PERIOD > 0 and epoch % solver.EVAL_PERIOD == 0)


def do_train(cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device,
             scaler=None, start_epoch=1, best=None, records=None, pending_eval=False, partial=None):
    """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS. Writes ``last.pth``, ``best.pth`` and
    ``metrics.jsonl`` to OUTPUT_DIR (main process only). ``scaler``: the GradScaler of fp16 (its scale and the
    steps it skipped are logged per epoch: ``loss_scale`` and ``skipped_steps`` in metrics.jsonl).
    ``records``: the per-epoch records of the epochs before ``start_epoch`` (a resumed run);
    ``pending_eval``: the epoch before ``start_epoch`` was saved but not yet evaluated.

    ``last.pth`` is written once per epoch, before the evaluation, so a crash during an evaluation loses no
    training: the resumed run evaluates that epoch first; an evaluation that finished is recorded in
    ``metrics.jsonl`` (``settle_pending_eval``).

    A stop signal (``engine.preemption.stop_signals``: SIGTERM, SIGUSR1) is acted on between iterations, on
    every rank at the same one: ``last.pth`` gets the state after the last finished iteration with
    ``partial`` (epoch, iterations done, the epoch's loss sums so far, ...), and ``Preempted`` is raised.
    ``partial`` (from such a checkpoint) makes ``start_epoch`` continue after its iterations: the sampler
    leaves out the batches already trained, and the epoch's record is the one of an uninterrupted epoch.
    Returns (all per-epoch records, best)."""
    s = cfg.SOLVER
    amp = amp_mode(cfg, device)
    out_dir = cfg.OUTPUT_DIR
    check_every_step = device.type == "cpu"
    best = best or {"mAP": -1.0}
    records = list(records or [])
    main = comm.is_main_process()
    # TensorBoard's x axis: iterations since the start of the run (epochs differ in length with P x K).
    step = sum(r.get("iterations", 0) for r in records)
    writer = make_writer(cfg, step + 1 if records else None)
    SAVED.clear()
    if records:  # a resumed run: last.pth holds what it resumed from until the next save
        SAVED.update(path=os.path.join(out_dir, "last.pth"), epoch=start_epoch - 1,
                     iteration=partial["iterations"] if partial else 0)

    def save_last(epoch, pending, progress=None):
        rngs = comm.all_gather_object(rng_state())  # every rank's random state, so each resumes its own
        with comm.same_outcome():  # a failed write (disk full) stops every rank with its message
            if main:
                atomic_save(training_state(model, optimizer, scheduler, scaler, epoch, best, cfg, records, pending,
                                           rngs, progress), os.path.join(out_dir, "last.pth"))
                atomic_write_jsonl(records, os.path.join(out_dir, "metrics.jsonl"))
        SAVED.update(path=os.path.join(out_dir, "last.pth"), epoch=epoch,
                     iteration=progress["iterations"] if progress else 0)

    def evaluate_epoch(epoch, record):
        nonlocal best
        metrics, _ = evaluate_model(cfg, unwrap(model), test_loader, num_query, device)
        record.update({k: metrics[k] for k in METRIC_KEYS})
        logger.info("Validation epoch %d: %s", epoch, format_metrics(metrics))
        end_step = sum(r.get("iterations", 0) for r in records[:records.index(record) + 1])
        log_scalars(writer, "eval", {k: metrics[k] for k in METRIC_KEYS}, end_step)
        previous, best = best, better_epoch(best, epoch, metrics)
        logger.info("Best so far (epoch %d): mAP %.1f%%, Rank-1 %.1f%%", best["epoch"], 100 * best["mAP"],
                    100 * best["Rank-1"])
        with comm.same_outcome():
            if main and best is not previous:
                atomic_save({"model": unwrap(model).state_dict(), "epoch": epoch, "metrics": best,
                             "config": cfg.dump()}, os.path.join(out_dir, "best.pth"))
            if main:  # last.pth of this epoch is already written (settle_pending_eval reads this on resume)
                atomic_write_jsonl(records, os.path.join(out_dir, "metrics.jsonl"))

    def stop_mid_epoch(epoch, n_iter, total, step, sums, skipped, seconds):
        """Save the state after ``n_iter`` iterations of ``epoch`` and raise Preempted (every rank)."""
        progress = {"epoch": epoch, "iterations": n_iter, "step": step,
                    "sums": {k: float(v) for k, v in sums.items()}, "seconds": round(seconds, 3),
                    "skipped": int(skipped) if skipped is not None else 0}
        save_last(epoch - 1, False, progress)
        stop(f"saved epoch {epoch}, iteration {n_iter} of {total}")

    def stop(saved):
        what = f"{preemption.requested()}: {saved} to {os.path.join(out_dir, 'last.pth')}; continue with --resume"
        logger.warning("Stopped by %s", what)
        if writer is not None:
            writer.close()
        raise preemption.Preempted(f"stopped by {what}")

    if pending_eval and records:
        logger.info("Epoch %d was saved but not evaluated: evaluating it first", records[-1]["epoch"])
        evaluate_epoch(records[-1]["epoch"], records[-1])
    for epoch in range(start_epoch, s.MAX_EPOCHS + 1):
        model.train()
        done = partial if partial and partial["epoch"] == epoch else None
        partial = None
        train_loader.sampler.set_epoch(epoch, done["iterations"] if done else 0)  # one global batch per iteration
        scheduler.step(epoch)
        sums, n_iter, t0 = {}, 0, time.time()
        total = len(train_loader)
        skipped = torch.zeros((), dtype=torch.int64, device=device) if scaler is not None else None
        if done:  # continue the epoch a stop signal interrupted: its sums and counters as they were
            sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in done["sums"].items()}
            n_iter, step, total, t0 = done["iterations"], done["step"], total + done["iterations"], t0 - done["seconds"]
            if skipped is not None:
                skipped += done["skipped"]
            logger.info("Epoch %d: continuing after iteration %d of %d", epoch, n_iter, total)
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{s.MAX_EPOCHS}", leave=False, initial=n_iter, total=total,
                   disable=not main or not cfg.LOG.PROGRESS_BARS)
        window = []  # (step, iteration, loss terms) since the last host read of the losses

        def flush():
            """Read the buffered loss terms from the device in one copy: TensorBoard gets every iteration,
            the log every LOG_PERIOD; a non-finite loss stops the run."""
            if not window:
                return
            names = list(window[0][2])
            table = torch.stack([torch.stack([t[k].float() for k in names]) for _, _, t in window]).tolist()
            lr = optimizer.param_groups[0]["lr"]
            for (it_step, it, _), row in zip(window, table):
                values = dict(zip(names, row))
                log_scalars(writer, "iter", {**values, "loss": sum(row), "lr": lr}, it_step)
                if not all(math.isfinite(v) for v in row):
                    raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, iteration {it}: {values}")
            it, values = window[-1][1], dict(zip(names, table[-1]))
            window.clear()
            if it % s.LOG_PERIOD == 0:
                bar.set_postfix(loss=f"{sum(values.values()):.3f}")
                logger.info("Epoch[%d] Iteration[%d/%d] loss %.4f (%s), lr %.2e", epoch, it, total,
                            sum(values.values()), ", ".join(f"{k} {v:.4f}" for k, v in values.items()), lr)

        for batch in bar:
            if comm.any_rank(preemption.requested()):
                flush()
                stop_mid_epoch(epoch, n_iter, total, step, sums, skipped, time.time() - t0)
            losses = train_step(model, batch, loss_fn, optimizer, device, amp, scaler, skipped)
            n_iter += 1
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            window.append((step, n_iter, {k: v.detach() for k, v in losses.items()}))
            # On the CPU reading a loss costs nothing: check every step. On CUDA it waits for the GPU.
            if check_every_step or n_iter % s.LOG_PERIOD == 0:
                flush()
        flush()
        if n_iter == 0:
            raise RuntimeError("the training loader produced no batch: too few identities or samples for "
                               "SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE")
        elapsed = time.time() - t0
        # DDP syncs gradients, not the BatchNorm statistics each rank updates locally: take rank 0's.
        comm.broadcast_buffers(unwrap(model))
        means = {k: round(float(v) / n_iter, 5) for k, v in sums.items()}
        lr = optimizer.param_groups[0]["lr"]
        record = {"epoch": epoch, "loss": round(sum(means.values()), 5), **means, "lr": lr,
                  "seconds": round(elapsed, 2), "samples_per_s": round(n_iter * train_loader.batch_size / elapsed, 1),
                  "iterations": n_iter}
        logger.info("Epoch %d done: loss %.4f (%s), lr %.2e, %.1fs, %.1f samples/s", epoch, record["loss"],
                    ", ".join(f"{k} {v:.4f}" for k, v in means.items()), lr, elapsed, record["samples_per_s"])
        if scaler is not None:
            record.update(loss_scale=scaler.get_scale(), skipped_steps=int(skipped))
            log = logger.warning if record["loss_scale"] < LOW_LOSS_SCALE else logger.info
            log("Epoch %d: loss scale %g, %d of %d steps skipped (non-finite gradients)%s", epoch,
                record["loss_scale"], record["skipped_steps"], n_iter,
                f"; a scale below {LOW_LOSS_SCALE} lets small fp16 gradients underflow to zero (try SOLVER.AMP "
                f"bf16 on a GPU that has it, or check the loss terms for a growing one)"
                if record["loss_scale"] < LOW_LOSS_SCALE else "")
        records.append(record)
        log_scalars(writer, "epoch", {k: v for k, v in record.items() if k not in ("epoch", "iterations")}, step)
        pending = evaluates(epoch, s)
        save_last(epoch, pending)
        if epoch < s.MAX_EPOCHS and comm.any_rank(preemption.requested()):
            stop(f"saved epoch {epoch}" + (" (it is evaluated first on --resume)" if pending else ""))
        if main and s.CHECKPOINT_PERIOD and epoch % s.CHECKPOINT_PERIOD == 0:
            atomic_save({"model": unwrap(model).state_dict(), "epoch": epoch, "config": cfg.dump()},
                        os.path.join(out_dir, f"{cfg.MODEL.NAME}_{epoch}.pth"))
        if pending:
            evaluate_epoch(epoch, record)
        comm.synchronize()
    if writer is not None:
        writer.close()
    return records, best
