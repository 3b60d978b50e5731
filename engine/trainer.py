"""The training loop: epochs of P x K batches. What is not the optimisation step itself (the loss log,
checkpoints, evaluation and best-epoch selection, stopping on a signal, TensorBoard, the EMA) is a hook
(``engine.hooks``)."""
import logging
import os
import time

import torch
from tqdm import tqdm

from data import source_dataset
from utils import comm
from utils.checkpoint import CheckpointError, key_report, read_checkpoint, set_rng_state

from . import preemption
from .amp import amp_mode, autocast_context, scaled_step
from .checkpoints import model_checkpoint, training_state, unwrap
from .hooks import (EMA, Checkpointer, Evaluation, Hook, LossLog, NonFiniteLossError, PeriodicCheckpoint,
                    Preemption, ScalerReport, TensorBoard, better_epoch, evaluates, make_writer)
from .inference import model_modalities

logger = logging.getLogger("signal.train")


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


def train_step(model, batch, loss_fn, optimizer, device, amp="none", scaler=None, skipped=None, prepare=None):
    """One optimisation step on a training batch (the images of the model's modalities, ``pid``, ``camid``): forward
    and loss terms under autocast (``amp``: 'fp16', 'bf16' or 'none'), backward (scaled when ``scaler`` is
    given; ``skipped``: a device counter of the steps the scaler skipped, see ``engine.amp.scaled_step``) and
    the optimizer step. ``prepare(batch, modalities, device)``: the model's input on the device (the loader's
    ``to_device``: normalisation and random erasing of its uint8 images); without it the batch's images are
    taken as the model's input and only moved. Returns the dict of named, weighted loss terms."""
    if prepare is not None:
        images = prepare(batch, model_modalities(model), device)
    else:
        images = {m: batch[m].to(device, non_blocking=True) for m in model_modalities(model)}
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


def default_hooks(cfg, device, scaler=None):
    """The hooks of a run as its config asks, in the order they are called: the loss log, the fp16 scaler
    report, the EMA of the weights (SOLVER.EMA_DECAY), TensorBoard, ``last.pth``, periodic checkpoints
    (SOLVER.CHECKPOINT_PERIOD), stopping on a signal, evaluation with best-epoch selection."""
    hooks = [LossLog(every_step=device.type == "cpu")]  # on the CPU reading a loss costs nothing
    if scaler is not None:
        hooks.append(ScalerReport())
    if cfg.SOLVER.EMA_DECAY:
        hooks.append(EMA(cfg.SOLVER.EMA_DECAY))
    checkpointer = Checkpointer()
    hooks += [TensorBoard(), checkpointer]
    if cfg.SOLVER.CHECKPOINT_PERIOD:
        hooks.append(PeriodicCheckpoint(cfg.SOLVER.CHECKPOINT_PERIOD))
    return hooks + [Preemption(checkpointer), Evaluation()]


class Trainer:
    """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS (``train``); the hooks write ``last.pth``, ``best.pth``
    and ``metrics.jsonl`` to OUTPUT_DIR (main process only), evaluate and stop on a signal.

    Args:
        scaler: the GradScaler of fp16, or None.
        hooks: the loop's hooks (``engine.hooks``; None: ``default_hooks``), called in order.
        start_epoch, best, records, pending_eval, partial, hook_states: a resumed run's state
            (``resume_from``): ``records`` the per-epoch records before ``start_epoch``; ``pending_eval``: the
            epoch before ``start_epoch`` was saved but not yet evaluated; ``partial``: the progress into
            ``start_epoch`` of a checkpoint written mid-epoch; ``hook_states``: {hook name: its state}.

    Ctrl-C raises ``preemption.Interrupted``, which says what ``last.pth`` holds (``saved``).
    """

    def __init__(self, cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device,
                 scaler=None, hooks=None, start_epoch=1, best=None, records=None, pending_eval=False,
                 partial=None, hook_states=None):
        self.cfg, self.model, self.unwrapped = cfg, model, unwrap(model)
        self.train_loader, self.test_loader, self.num_query = train_loader, test_loader, num_query
        self.optimizer, self.scheduler, self.loss_fn, self.device, self.scaler = (optimizer, scheduler, loss_fn,
                                                                                  device, scaler)
        self.hooks = list(default_hooks(cfg, device, scaler) if hooks is None else hooks)
        names = [h.name for h in self.hooks if h.name]
        if len(names) != len(set(names)):
            raise ValueError(f"hook names must be unique (their state is saved by name): {names}")
        for h in self.hooks:
            if h.name and (hook_states or {}).get(h.name) is not None:
                h.load_state_dict(hook_states[h.name])
        self.amp = amp_mode(cfg, device)
        self.prepare = getattr(source_dataset(train_loader), "to_device", None)
        self.start_epoch, self.best = start_epoch, best or {"mAP": -1.0}
        self.records, self.pending_eval, self.partial = list(records or []), pending_eval, partial
        # TensorBoard's x axis: iterations since the start of the run (epochs differ in length with P x K).
        self.step = sum(r.get("iterations", 0) for r in self.records)
        self.epoch, self.n_iter, self.total, self.bar, self.writer, self.skipped = start_epoch - 1, 0, 0, None, None, None
        self.sums, self.t0 = {}, 0.0  # the epoch's loss sums (device tensors) and its start time
        # What the run has saved so far (last.pth, its completed epoch and, mid-epoch, the iteration).
        self.saved = {}
        if self.records:  # a resumed run: last.pth holds what it resumed from until the next save
            self.saved = dict(path=os.path.join(cfg.OUTPUT_DIR, "last.pth"), epoch=start_epoch - 1,
                              iteration=partial["iterations"] if partial else 0)

    def call(self, event, *args):
        """Call ``event`` on every hook, in order."""
        for h in self.hooks:
            getattr(h, event)(self, *args)

    def eval_model(self):
        """The model that is evaluated and written to best.pth (the EMA's when SOLVER.EMA_DECAY is set)."""
        model = self.unwrapped
        for h in self.hooks:
            model = h.eval_model(self, model)
        return model

    def checkpoint(self, model=None, **extra):
        """A checkpoint of ``model``'s weights; by default the evaluated ones (``best.pth``, the periodic ones)."""
        return model_checkpoint(self.eval_model() if model is None else model, self.cfg, **extra)

    def hook_states(self):
        states = {h.name: h.state_dict() for h in self.hooks if h.name}
        return {name: state for name, state in states.items() if state is not None}

    def train(self):
        """Run the epochs; returns (all per-epoch records, best)."""
        try:
            self.call("before_train")
            for epoch in range(self.start_epoch, self.cfg.SOLVER.MAX_EPOCHS + 1):
                self.run_epoch(epoch)
            self.call("after_train")
        except KeyboardInterrupt as e:
            if isinstance(e, preemption.Interrupted):
                raise
            raise preemption.Interrupted(self.saved) from None
        finally:
            self.call("after_run")
        return self.records, self.best

    def run_epoch(self, epoch):
        """One epoch: its steps, then its record, handed to the hooks (which save, evaluate, may stop)."""
        self.begin_epoch(epoch)
        self.call("before_epoch")
        for batch in self.bar:
            self.call("before_step")
            losses = train_step(self.model, batch, self.loss_fn, self.optimizer, self.device, self.amp, self.scaler,
                                self.skipped, self.prepare)
            self.n_iter += 1
            self.step += 1
            for k, v in losses.items():
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
            self.call("after_step", losses)
        self.call("after_steps")
        self.call("after_epoch", self.end_epoch())
        comm.synchronize()

    def begin_epoch(self, epoch):
        """Training mode, the epoch's sampler order and LR, its counters (those of a checkpoint written during
        this epoch when continuing one) and its progress bar."""
        self.epoch = epoch
        self.model.train()
        done = self.partial if self.partial and self.partial["epoch"] == epoch else None
        self.partial = None
        self.train_loader.sampler.set_epoch(epoch, done["iterations"] if done else 0)  # one batch per iteration
        self.scheduler.step(epoch)
        self.sums, self.n_iter, self.t0 = {}, 0, time.time()
        self.total = len(self.train_loader)
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device) if self.scaler is not None else None
        if done:  # continue the epoch a stop signal interrupted: its sums and counters as they were
            self.sums = {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in done["sums"].items()}
            self.n_iter, self.step, self.t0 = done["iterations"], done["step"], self.t0 - done["seconds"]
            self.total += done["iterations"]
            if self.skipped is not None:
                self.skipped += done["skipped"]
            logger.info("Epoch %d: continuing after iteration %d of %d", epoch, self.n_iter, self.total)
        self.bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.cfg.SOLVER.MAX_EPOCHS}", leave=False,
                        initial=self.n_iter, total=self.total,
                        disable=not comm.is_main_process() or not self.cfg.LOG.PROGRESS_BARS)

    def end_epoch(self):
        """The finished epoch's record (mean loss terms, LR, speed), logged and appended to ``records``."""
        if self.n_iter == 0:
            raise RuntimeError("the training loader produced no batch: too few identities or samples for "
                               "SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE")
        elapsed = time.time() - self.t0
        # DDP syncs gradients, not the BatchNorm statistics each rank updates locally: take rank 0's.
        comm.broadcast_buffers(self.unwrapped)
        means = {k: round(float(v) / self.n_iter, 5) for k, v in self.sums.items()}
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"epoch": self.epoch, "loss": round(sum(means.values()), 5), **means, "lr": lr,
                  "seconds": round(elapsed, 2),
                  "samples_per_s": round(self.n_iter * self.train_loader.batch_size / elapsed, 1),
                  "iterations": self.n_iter}
        logger.info("Epoch %d done: loss %.4f (%s), lr %.2e, %.1fs, %.1f samples/s", self.epoch, record["loss"],
                    ", ".join(f"{k} {v:.4f}" for k, v in means.items()), lr, elapsed, record["samples_per_s"])
        self.records.append(record)
        return record


def do_train(cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device, **kwargs):
    """``Trainer(...).train()``: (all per-epoch records, best)."""
    return Trainer(cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device,
                   **kwargs).train()


__all__ = ["Trainer", "Hook", "default_hooks", "do_train", "resume_from", "train_step", "training_state",
           "model_checkpoint", "NonFiniteLossError", "unwrap", "settle_pending_eval", "better_epoch", "evaluates",
           "make_writer"]
