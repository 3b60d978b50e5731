"""The training loop: epochs of P x K batches, periodic evaluation, resumable checkpoints. What is not the
optimisation step itself is a hook (``engine.hooks``)."""
import logging
import os
import time

import torch
from tqdm import tqdm

from modeling import MODALITIES, checkpoint_meta
from utils import comm
from utils.checkpoint import (CheckpointError, atomic_save, atomic_write_jsonl, key_report, read_checkpoint,
                              rng_state, set_rng_state)
from utils.metrics import METRIC_NAMES

from . import preemption
from .amp import amp_mode, autocast_context, scaled_step
from .hooks import EMA, Hook, LossLog, NonFiniteLossError, PeriodicCheckpoint, ScalerReport, log_scalars
from .inference import evaluate_model, format_metrics

logger = logging.getLogger("signal.train")

METRIC_KEYS = METRIC_NAMES


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def model_checkpoint(model, cfg, **extra):
    """A checkpoint of the weights: the state dict, its sizes and method (``meta``, so ``test.py`` builds the
    model without the training data) and the config that trained it, plus ``extra`` entries."""
    model = unwrap(model)
    return {"model": model.state_dict(), "meta": checkpoint_meta(model), "config": cfg.dump(), **extra}


def training_state(model, optimizer, scheduler, scaler, epoch, best, cfg, records=(), pending_eval=False,
                   rank_rngs=None, partial=None, hooks=None):
    """Everything needed to continue the run after ``epoch``: weights, optimizer, scaler, RNG, the best
    metrics, the per-epoch records (metrics.jsonl) and whether the epoch still awaits its evaluation.
    ``rank_rngs``: the random states of every rank (torch.distributed; ``rng`` is rank 0's). ``partial``: the
    progress into epoch ``epoch + 1`` of a run stopped mid-epoch (see ``Trainer``), else None. ``hooks``: the
    state of each hook with one, by name."""
    rngs = list(rank_rngs) if rank_rngs else [rng_state()]
    return model_checkpoint(model, cfg, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict() if scaler else None, epoch=epoch, best=best, rng=rngs[0],
                            rank_rngs=rngs, records=list(records), pending_eval=pending_eval, partial=partial,
                            hooks=dict(hooks or {}))


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


def evaluates(epoch, solver):
    """Whether ``epoch`` is evaluated: every EVAL_PERIOD epochs (0: never before the last) and the last."""
    return epoch == solver.MAX_EPOCHS or (solver.EVAL_PERIOD > 0 and epoch % solver.EVAL_PERIOD == 0)


def default_hooks(cfg, device, scaler=None):
    """The hooks of a run as its config asks: the loss log, the fp16 scaler report, periodic checkpoints
    (SOLVER.CHECKPOINT_PERIOD) and the EMA of the weights (SOLVER.EMA_DECAY), in that order."""
    hooks = [LossLog(every_step=device.type == "cpu")]  # on the CPU reading a loss costs nothing
    if scaler is not None:
        hooks.append(ScalerReport())
    if cfg.SOLVER.CHECKPOINT_PERIOD:
        hooks.append(PeriodicCheckpoint(cfg.SOLVER.CHECKPOINT_PERIOD))
    if cfg.SOLVER.EMA_DECAY:
        hooks.append(EMA(cfg.SOLVER.EMA_DECAY))
    return hooks


class Trainer:
    """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS (``train``). Writes ``last.pth``, ``best.pth`` and
    ``metrics.jsonl`` to OUTPUT_DIR (main process only).

    Args:
        scaler: the GradScaler of fp16, or None.
        hooks: the loop's hooks (``engine.hooks``; None: ``default_hooks``), called in order.
        start_epoch, best, records, pending_eval, partial, hook_states: a resumed run's state
            (``resume_from``): ``records`` the per-epoch records before ``start_epoch``; ``pending_eval``: the
            epoch before ``start_epoch`` was saved but not yet evaluated; ``partial``: the progress into
            ``start_epoch`` of a checkpoint written mid-epoch; ``hook_states``: {hook name: its state}.

    ``last.pth`` is written once per epoch, before the evaluation, so a crash during an evaluation loses no
    training: the resumed run evaluates that epoch first; an evaluation that finished is recorded in
    ``metrics.jsonl`` (``settle_pending_eval``).

    A stop signal (``engine.preemption.stop_signals``: SIGTERM, SIGUSR1) is acted on between iterations, on
    every rank at the same one: ``last.pth`` gets the state after the last finished iteration with
    ``partial`` (epoch, iterations done, the epoch's loss sums so far, ...), and ``Preempted`` is raised. The
    resumed run's sampler leaves out the batches already trained, and the epoch's record is the one of an
    uninterrupted epoch. Ctrl-C raises ``preemption.Interrupted``, which says what ``last.pth`` holds.
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
        self.main = comm.is_main_process()
        self.start_epoch, self.best = start_epoch, best or {"mAP": -1.0}
        self.records, self.pending_eval, self.partial = list(records or []), pending_eval, partial
        # TensorBoard's x axis: iterations since the start of the run (epochs differ in length with P x K).
        self.step = sum(r.get("iterations", 0) for r in self.records)
        self.epoch, self.n_iter, self.total, self.bar, self.writer, self.skipped = start_epoch - 1, 0, 0, None, None, None
        # What the run has saved so far (last.pth, its completed epoch and, mid-epoch, the iteration).
        self.saved = {}
        if self.records:  # a resumed run: last.pth holds what it resumed from until the next save
            self.saved = dict(path=self._path("last.pth"), epoch=start_epoch - 1,
                              iteration=partial["iterations"] if partial else 0)

    def _path(self, name):
        return os.path.join(self.cfg.OUTPUT_DIR, name)

    def _call(self, event, *args):
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

    def train(self):
        """Run the epochs; returns (all per-epoch records, best)."""
        try:
            self.writer = make_writer(self.cfg, self.step + 1 if self.records else None)
            self._call("before_train")
            if self.pending_eval and self.records:
                logger.info("Epoch %d was saved but not evaluated: evaluating it first", self.records[-1]["epoch"])
                self.evaluate_epoch(self.records[-1]["epoch"], self.records[-1])
            for epoch in range(self.start_epoch, self.cfg.SOLVER.MAX_EPOCHS + 1):
                self.run_epoch(epoch)
            self._call("after_train")
        except KeyboardInterrupt as e:
            if isinstance(e, preemption.Interrupted):
                raise
            raise preemption.Interrupted(self.saved) from None
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.records, self.best

    def run_epoch(self, epoch):
        s, device = self.cfg.SOLVER, self.device
        self.epoch = epoch
        self.model.train()
        done = self.partial if self.partial and self.partial["epoch"] == epoch else None
        self.partial = None
        self.train_loader.sampler.set_epoch(epoch, done["iterations"] if done else 0)  # one batch per iteration
        self.scheduler.step(epoch)
        sums, self.n_iter, t0 = {}, 0, time.time()
        self.total = len(self.train_loader)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device) if self.scaler is not None else None
        if done:  # continue the epoch a stop signal interrupted: its sums and counters as they were
            sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in done["sums"].items()}
            self.n_iter, self.step, t0 = done["iterations"], done["step"], t0 - done["seconds"]
            self.total += done["iterations"]
            if self.skipped is not None:
                self.skipped += done["skipped"]
            logger.info("Epoch %d: continuing after iteration %d of %d", epoch, self.n_iter, self.total)
        self._call("before_epoch")
        self.bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{s.MAX_EPOCHS}", leave=False, initial=self.n_iter,
                        total=self.total, disable=not self.main or not self.cfg.LOG.PROGRESS_BARS)
        for batch in self.bar:
            if comm.any_rank(preemption.requested()):
                self._call("after_steps")
                self.stop_mid_epoch(sums, time.time() - t0)
            losses = train_step(self.model, batch, self.loss_fn, self.optimizer, device, self.amp, self.scaler,
                                self.skipped)
            self.n_iter += 1
            self.step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            self._call("after_step", losses)
        self._call("after_steps")
        if self.n_iter == 0:
            raise RuntimeError("the training loader produced no batch: too few identities or samples for "
                               "SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE")
        elapsed = time.time() - t0
        # DDP syncs gradients, not the BatchNorm statistics each rank updates locally: take rank 0's.
        comm.broadcast_buffers(self.unwrapped)
        means = {k: round(float(v) / self.n_iter, 5) for k, v in sums.items()}
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"epoch": epoch, "loss": round(sum(means.values()), 5), **means, "lr": lr,
                  "seconds": round(elapsed, 2),
                  "samples_per_s": round(self.n_iter * self.train_loader.batch_size / elapsed, 1),
                  "iterations": self.n_iter}
        logger.info("Epoch %d done: loss %.4f (%s), lr %.2e, %.1fs, %.1f samples/s", epoch, record["loss"],
                    ", ".join(f"{k} {v:.4f}" for k, v in means.items()), lr, elapsed, record["samples_per_s"])
        self._call("after_epoch", record)
        self.records.append(record)
        log_scalars(self.writer, "epoch", {k: v for k, v in record.items() if k not in ("epoch", "iterations")},
                    self.step)
        pending = evaluates(epoch, s)
        self.save_last(epoch, pending)
        if epoch < s.MAX_EPOCHS and comm.any_rank(preemption.requested()):
            self.stop(f"saved epoch {epoch}" + (" (it is evaluated first on --resume)" if pending else ""))
        self._call("after_save")
        if pending:
            self.evaluate_epoch(epoch, record)
        comm.synchronize()

    def hook_states(self):
        states = {h.name: h.state_dict() for h in self.hooks if h.name}
        return {name: state for name, state in states.items() if state is not None}

    def save_last(self, epoch, pending, progress=None):
        rngs = comm.all_gather_object(rng_state())  # every rank's random state, so each resumes its own
        with comm.same_outcome():  # a failed write (disk full) stops every rank with its message
            if self.main:
                atomic_save(training_state(self.model, self.optimizer, self.scheduler, self.scaler, epoch, self.best,
                                           self.cfg, self.records, pending, rngs, progress, self.hook_states()),
                            self._path("last.pth"))
                atomic_write_jsonl(self.records, self._path("metrics.jsonl"))
        self.saved = dict(path=self._path("last.pth"), epoch=epoch,
                          iteration=progress["iterations"] if progress else 0)

    def evaluate_epoch(self, epoch, record):
        metrics, _ = evaluate_model(self.cfg, self.eval_model(), self.test_loader, self.num_query, self.device)
        record.update({k: metrics[k] for k in METRIC_KEYS})
        logger.info("Validation epoch %d: %s", epoch, format_metrics(metrics))
        end_step = sum(r.get("iterations", 0) for r in self.records[:self.records.index(record) + 1])
        log_scalars(self.writer, "eval", {k: metrics[k] for k in METRIC_KEYS}, end_step)
        previous, self.best = self.best, better_epoch(self.best, epoch, metrics)
        logger.info("Best so far (epoch %d): mAP %.1f%%, Rank-1 %.1f%%", self.best["epoch"], 100 * self.best["mAP"],
                    100 * self.best["Rank-1"])
        with comm.same_outcome():
            if self.main and self.best is not previous:
                atomic_save(self.checkpoint(epoch=epoch, metrics=self.best), self._path("best.pth"))
            if self.main:  # last.pth of this epoch is already written (settle_pending_eval reads this on resume)
                atomic_write_jsonl(self.records, self._path("metrics.jsonl"))

    def stop_mid_epoch(self, sums, seconds):
        """Save the state after the finished iterations of the epoch and raise Preempted (every rank)."""
        progress = {"epoch": self.epoch, "iterations": self.n_iter, "step": self.step,
                    "sums": {k: float(v) for k, v in sums.items()}, "seconds": round(seconds, 3),
                    "skipped": int(self.skipped) if self.skipped is not None else 0}
        self.save_last(self.epoch - 1, False, progress)
        self.stop(f"saved epoch {self.epoch}, iteration {self.n_iter} of {self.total}")

    def stop(self, saved):
        what = f"{preemption.requested()}: {saved} to {self._path('last.pth')}; continue with --resume"
        logger.warning("Stopped by %s", what)
        raise preemption.Preempted(f"stopped by {what}")


def do_train(cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device, **kwargs):
    """``Trainer(...).train()``: (all per-epoch records, best)."""
    return Trainer(cfg, model, train_loader, test_loader, num_query, optimizer, scheduler, loss_fn, device,
                   **kwargs).train()


__all__ = ["Trainer", "Hook", "default_hooks", "do_train", "resume_from", "train_step", "training_state",
           "model_checkpoint", "NonFiniteLossError", "unwrap", "settle_pending_eval", "better_epoch"]
