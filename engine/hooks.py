"""Hooks: every part of the training loop that is not the optimisation step itself.

``engine.trainer.Trainer`` runs epochs of steps; everything else is a ``Hook`` it calls at fixed points, in
the order of its list (``engine.trainer.default_hooks``): the loss log, the fp16 scaler report, an EMA of the
weights, TensorBoard, ``last.pth`` (``Checkpointer``), stopping on a signal (``Preemption``), periodic
checkpoints, and evaluation with best-epoch selection (``Evaluation``). A hook with a state returns it from
``state_dict``: ``last.pth`` stores it under ``hooks[<name>]`` and a resumed run (also one stopped mid-epoch)
gets it back through ``load_state_dict`` before training goes on, so resuming stays bit-exact. The run's
records and best epoch, which ``train.py`` and ``summary.json`` read too, stay on the trainer (``records``,
``best``, ``pending_eval``) and in ``last.pth`` under their own names.
"""
import copy
import logging
import math
import os
import time

import torch

from utils import comm
from utils.checkpoint import atomic_save, atomic_write_jsonl, rng_state
from utils.errors import SignalError
from utils.metrics import METRIC_NAMES

from . import preemption
from .checkpoints import training_state
from .inference import evaluate_model, format_metrics

logger = logging.getLogger("signal.train")

# A GradScaler scale below this is logged as a warning at the end of the epoch.
LOW_LOSS_SCALE = 2 ** 8


class NonFiniteLossError(SignalError):
    pass


class Hook:
    """Called by the Trainer ``t`` (its ``epoch``, ``n_iter``, ``step``, ``model``, ``optimizer``, ...):

    ``before_train(t)``: once, after a resumed run's state is restored.
    ``before_epoch(t)``: the model is in training mode, the epoch's LR is set.
    ``before_step(t)``: a batch is loaded and about to be trained on.
    ``after_step(t, losses)``: after each optimizer step, with its named loss terms (device tensors).
    ``after_steps(t)``: the epoch's steps ended or a stop signal interrupts them (read what is buffered).
    ``after_epoch(t, record)``: the epoch's record (metrics.jsonl; already in ``t.records``): add entries to
        it, save, evaluate. Hooks run in the list's order, so those before the ``Checkpointer`` act on what
        ``last.pth`` stores.
    ``after_train(t)``: once, at the end (not when stopped).
    ``after_run(t)``: always, last, also when the run stops or fails (release what ``before_train`` opened).
    ``eval_model(t, model)``: the model that is evaluated and written to ``best.pth`` (default: ``model``).
    """
    name = ""

    def before_train(self, t):
        pass

    def before_epoch(self, t):
        pass

    def before_step(self, t):
        pass

    def after_step(self, t, losses):
        pass

    def after_steps(self, t):
        pass

    def after_epoch(self, t, record):
        pass

    def after_train(self, t):
        pass

    def after_run(self, t):
        pass

    def eval_model(self, t, model):
        return model

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass


def log_scalars(writer, prefix, values, step):
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)


class LossLog(Hook):
    """Reads the loss terms from the device in one copy per LOG_PERIOD steps (every step on the CPU, where
    it costs nothing): TensorBoard gets every iteration, the log every LOG_PERIOD; a non-finite loss stops the
    run (``NonFiniteLossError``)."""
    name = "loss_log"

    def __init__(self, every_step):
        self.every_step = every_step
        self.window = []  # (step, iteration, loss terms) since the last read

    def after_step(self, t, losses):
        self.window.append((t.step, t.n_iter, {k: v.detach() for k, v in losses.items()}))
        if self.every_step or t.n_iter % t.cfg.SOLVER.LOG_PERIOD == 0:
            self.after_steps(t)

    def after_steps(self, t):
        if not self.window:
            return
        names = list(self.window[0][2])
        table = torch.stack([torch.stack([v[k].float() for k in names]) for _, _, v in self.window]).tolist()
        lr = t.optimizer.param_groups[0]["lr"]
        for (it_step, it, _), row in zip(self.window, table):
            values = dict(zip(names, row))
            log_scalars(t.writer, "iter", {**values, "loss": sum(row), "lr": lr}, it_step)
            if not all(math.isfinite(v) for v in row):
                raise NonFiniteLossError(f"non-finite loss at epoch {t.epoch}, iteration {it}: {values}")
        it, values = self.window[-1][1], dict(zip(names, table[-1]))
        self.window.clear()
        if it % t.cfg.SOLVER.LOG_PERIOD == 0:
            if t.bar is not None:
                t.bar.set_postfix(loss=f"{sum(values.values()):.3f}")
            logger.info("Epoch[%d] Iteration[%d/%d] loss %.4f (%s), lr %.2e", t.epoch, it, t.total,
                        sum(values.values()), ", ".join(f"{k} {v:.4f}" for k, v in values.items()), lr)


class ScalerReport(Hook):
    """fp16: the GradScaler's scale and the steps it skipped (non-finite gradients), per epoch
    (``loss_scale`` and ``skipped_steps`` in metrics.jsonl); a low scale is a warning."""
    name = "scaler_report"

    def after_epoch(self, t, record):
        record.update(loss_scale=t.scaler.get_scale(), skipped_steps=int(t.skipped))
        low = record["loss_scale"] < LOW_LOSS_SCALE
        (logger.warning if low else logger.info)(
            "Epoch %d: loss scale %g, %d of %d steps skipped (non-finite gradients)%s", t.epoch,
            record["loss_scale"], record["skipped_steps"], t.n_iter,
            f"; a scale below {LOW_LOSS_SCALE} lets small fp16 gradients underflow to zero (try SOLVER.AMP "
            f"bf16 on a GPU that has it, or check the loss terms for a growing one)" if low else "")


class PeriodicCheckpoint(Hook):
    """SOLVER.CHECKPOINT_PERIOD: the evaluated weights every that many epochs as ``<MODEL.NAME>_<epoch>.pth``
    (main process)."""
    name = "periodic_checkpoint"

    def __init__(self, period):
        self.period = period

    def after_epoch(self, t, record):
        if comm.is_main_process() and t.epoch % self.period == 0:
            atomic_save(t.checkpoint(epoch=t.epoch),
                        os.path.join(t.cfg.OUTPUT_DIR, f"{t.cfg.MODEL.NAME}_{t.epoch}.pth"))


class EMA(Hook):
    """An exponential moving average of the weights (SOLVER.EMA_DECAY): after every optimizer step each
    floating-point parameter and buffer becomes ``decay * ema + (1 - decay) * current`` (integer buffers are
    copied). The average is what is evaluated and written to ``best.pth`` (and the periodic checkpoints);
    ``ema.pth`` holds the average of the last finished epoch; ``last.pth`` keeps the trained weights and stores
    the average beside them (``hooks.ema``), so a resumed run continues both."""
    name = "ema"

    def __init__(self, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"SOLVER.EMA_DECAY expects a value in (0, 1) (0: off), got {decay}")
        self.decay = decay
        self.model = None
        self._loaded = None

    def before_train(self, t):
        self.model = copy.deepcopy(t.unwrapped).eval().requires_grad_(False)
        if self._loaded is not None:
            self.model.load_state_dict(self._loaded)
            self._loaded = None
        elif t.records:
            logger.info("SOLVER.EMA_DECAY: the checkpoint stores no average of the weights; it starts from "
                        "the resumed weights")
        own, ema = t.unwrapped.state_dict(), self.model.state_dict()  # tensors sharing the modules' storage
        self._float = ([ema[k] for k in ema if ema[k].is_floating_point()],
                       [own[k] for k in ema if ema[k].is_floating_point()])
        self._other = [(ema[k], own[k]) for k in ema if not ema[k].is_floating_point()]

    @torch.no_grad()
    def after_step(self, t, losses):
        # ema + (1 - decay) * (current - ema) = decay * ema + (1 - decay) * current
        torch._foreach_lerp_(self._float[0], self._float[1], 1.0 - self.decay)
        for v, current in self._other:
            v.copy_(current)

    def after_epoch(self, t, record):
        # DDP syncs gradients, not the BatchNorm statistics each rank updates: take rank 0's, as for the model
        comm.broadcast_buffers(self.model)
        if comm.is_main_process():  # the average of the finished epoch as a checkpoint of its own
            atomic_save(t.checkpoint(self.model, epoch=t.epoch), os.path.join(t.cfg.OUTPUT_DIR, "ema.pth"))

    def eval_model(self, t, model):
        return self.model

    def state_dict(self):
        return self.model.state_dict() if self.model is not None else self._loaded

    def load_state_dict(self, state):
        self._loaded = state


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


class TensorBoard(Hook):
    """LOG.TENSORBOARD: opens ``t.writer`` (read by the loss log and the evaluation) and logs each epoch's
    record; a resumed run drops the events a stopped run logged after its checkpoint."""

    def before_train(self, t):
        t.writer = make_writer(t.cfg, t.step + 1 if t.records else None)

    def after_epoch(self, t, record):
        log_scalars(t.writer, "epoch", {k: v for k, v in record.items() if k not in ("epoch", "iterations")},
                    t.step)

    def after_run(self, t):
        if t.writer is not None:
            t.writer.close()
            t.writer = None


def evaluates(epoch, solver):
    """Whether ``epoch`` is evaluated: every EVAL_PERIOD epochs (0: never before the last) and the last."""
    return epoch == solver.MAX_EPOCHS or (solver.EVAL_PERIOD > 0 and epoch % solver.EVAL_PERIOD == 0)


class Checkpointer(Hook):
    """``last.pth``: everything a resumed run needs (weights, optimizer, scaler, every rank's random state, the
    records, the best epoch, each hook's state), written after every epoch (main process), before that
    epoch's evaluation, so a crash during an evaluation loses no training: the checkpoint says
    ``pending_eval`` and the resumed run evaluates that epoch first. ``metrics.jsonl`` is rewritten with it.
    ``save`` also writes the mid-epoch checkpoint of a stop signal (``progress``). ``t.saved`` says what
    ``last.pth`` holds (for the Ctrl-C message)."""

    def after_epoch(self, t, record):
        t.pending_eval = evaluates(t.epoch, t.cfg.SOLVER)
        self.save(t, t.epoch, t.pending_eval)

    def save(self, t, epoch, pending, progress=None):
        rngs = comm.all_gather_object(rng_state())  # every rank's random state, so each resumes its own
        path = os.path.join(t.cfg.OUTPUT_DIR, "last.pth")
        with comm.same_outcome():  # a failed write (disk full) stops every rank with its message
            if comm.is_main_process():
                atomic_save(training_state(t.model, t.optimizer, t.scheduler, t.scaler, epoch, t.best, t.cfg,
                                           t.records, pending, rngs, progress, t.hook_states()), path)
                atomic_write_jsonl(t.records, os.path.join(t.cfg.OUTPUT_DIR, "metrics.jsonl"))
        t.saved = dict(path=path, epoch=epoch, iteration=progress["iterations"] if progress else 0)


class Preemption(Hook):
    """A stop signal (``engine.preemption.stop_signals``: SIGTERM, SIGUSR1) is acted on between iterations, on
    every rank at the same one: ``last.pth`` gets the state after the last finished iteration with
    ``partial`` (epoch, iterations done, the epoch's loss sums so far, ...), and ``Preempted`` is raised. The
    resumed run's sampler leaves out the batches already trained, and the epoch's record is the one of an
    uninterrupted epoch. A signal during an epoch's end stops the run after its ``last.pth`` (before the
    evaluation, which the resumed run does first)."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer

    def before_step(self, t):
        if comm.any_rank(preemption.requested()):
            t.call("after_steps")
            progress = {"epoch": t.epoch, "iterations": t.n_iter, "step": t.step,
                        "sums": {k: float(v) for k, v in t.sums.items()}, "seconds": round(time.time() - t.t0, 3),
                        "skipped": int(t.skipped) if t.skipped is not None else 0}
            self.checkpointer.save(t, t.epoch - 1, False, progress)
            self.stop(t, f"saved epoch {t.epoch}, iteration {t.n_iter} of {t.total}")

    def after_epoch(self, t, record):
        if t.epoch < t.cfg.SOLVER.MAX_EPOCHS and comm.any_rank(preemption.requested()):
            self.stop(t, f"saved epoch {t.epoch}" + (" (it is evaluated first on --resume)" if t.pending_eval
                                                     else ""))

    @staticmethod
    def stop(t, saved):
        what = f"{preemption.requested()}: {saved} to {t.saved['path']}; continue with --resume"
        logger.warning("Stopped by %s", what)
        raise preemption.Preempted(f"stopped by {what}")


def better_epoch(best, epoch, metrics):
    """The best-epoch record after ``epoch`` was evaluated with ``metrics``: a strictly higher mAP wins (the
    earliest epoch keeps a tie); ``best`` itself otherwise."""
    if metrics["mAP"] > best["mAP"]:
        return {"epoch": epoch, **{k: metrics[k] for k in METRIC_NAMES}}
    return best


class Evaluation(Hook):
    """Evaluates ``t.eval_model()`` on ``t.test_loader`` after each epoch the ``Checkpointer`` marked
    (SOLVER.EVAL_PERIOD and the last), adds the figures to the epoch's record, keeps the best epoch
    (``t.best``: a strictly higher mAP wins) and writes ``best.pth`` when it changes. A resumed run whose
    ``last.pth`` awaits an evaluation does it first."""

    def before_train(self, t):
        if t.pending_eval and t.records:
            logger.info("Epoch %d was saved but not evaluated: evaluating it first", t.records[-1]["epoch"])
            self.evaluate(t, t.records[-1]["epoch"], t.records[-1])

    def after_epoch(self, t, record):
        if t.pending_eval:
            self.evaluate(t, t.epoch, record)

    def evaluate(self, t, epoch, record):
        metrics, _ = evaluate_model(t.cfg, t.eval_model(), t.test_loader, t.num_query, t.device)
        record.update({k: metrics[k] for k in METRIC_NAMES})
        logger.info("Validation epoch %d: %s", epoch, format_metrics(metrics))
        end_step = sum(r.get("iterations", 0) for r in t.records[:t.records.index(record) + 1])
        log_scalars(t.writer, "eval", {k: metrics[k] for k in METRIC_NAMES}, end_step)
        previous, t.best = t.best, better_epoch(t.best, epoch, metrics)
        logger.info("Best so far (epoch %d): mAP %.1f%%, Rank-1 %.1f%%", t.best["epoch"], 100 * t.best["mAP"],
                    100 * t.best["Rank-1"])
        with comm.same_outcome():
            if comm.is_main_process() and t.best is not previous:
                atomic_save(t.checkpoint(epoch=epoch, metrics=t.best), os.path.join(t.cfg.OUTPUT_DIR, "best.pth"))
            if comm.is_main_process():  # last.pth of this epoch is already written (settle_pending_eval reads this)
                atomic_write_jsonl(t.records, os.path.join(t.cfg.OUTPUT_DIR, "metrics.jsonl"))
