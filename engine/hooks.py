"""Hooks: the parts of the training loop that are not the optimisation step itself.

``engine.trainer.Trainer`` runs epochs of steps; everything else (the loss log, the fp16 scaler report,
periodic checkpoints, an EMA of the weights, a method's own schedule) is a ``Hook`` it calls at fixed points.
A hook with a state returns it from ``state_dict``: ``last.pth`` stores it under ``hooks[<name>]`` and a
resumed run (also one stopped mid-epoch) gets it back through ``load_state_dict`` before training goes on, so
resuming stays bit-exact.
"""
import copy
import logging
import math
import os

import torch

from utils import comm
from utils.checkpoint import atomic_save
from utils.errors import SignalError

logger = logging.getLogger("signal.train")

# A GradScaler scale below this is logged as a warning at the end of the epoch.
LOW_LOSS_SCALE = 2 ** 8


class NonFiniteLossError(SignalError):
    pass


class Hook:
    """Called by the Trainer ``t`` (its ``epoch``, ``n_iter``, ``step``, ``model``, ``optimizer``, ...):

    ``before_train(t)``: once, after a resumed run's state is restored.
    ``before_epoch(t)``: the model is in training mode, the epoch's LR is set.
    ``after_step(t, losses)``: after each optimizer step, with its named loss terms (device tensors).
    ``after_steps(t)``: the epoch's steps ended or a stop signal interrupts them (read what is buffered).
    ``after_epoch(t, record)``: the epoch's record (metrics.jsonl) before it is saved; add entries to it.
    ``after_save(t)``: ``last.pth`` of the finished epoch is written.
    ``after_train(t)``: once, at the end (not when stopped).
    ``eval_model(t, model)``: the model that is evaluated and written to ``best.pth`` (default: ``model``).
    """
    name = ""

    def before_train(self, t):
        pass

    def before_epoch(self, t):
        pass

    def after_step(self, t, losses):
        pass

    def after_steps(self, t):
        pass

    def after_epoch(self, t, record):
        pass

    def after_save(self, t):
        pass

    def after_train(self, t):
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

    def after_save(self, t):
        if comm.is_main_process() and t.epoch % self.period == 0:
            atomic_save(t.checkpoint(epoch=t.epoch),
                        os.path.join(t.cfg.OUTPUT_DIR, f"{t.cfg.MODEL.NAME}_{t.epoch}.pth"))


class EMA(Hook):
    """An exponential moving average of the weights (SOLVER.EMA_DECAY): after every optimizer step each
    floating-point parameter and buffer becomes ``decay * ema + (1 - decay) * current`` (integer buffers are
    copied). The average is what is evaluated and written to ``best.pth`` (and the periodic checkpoints);
    ``ema.pth`` holds the average of the last finished epoch; ``last.pth`` keeps the trained weights and stores the average beside them (``hooks.ema``), so a resumed
    run continues both."""
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

    def after_save(self, t):
        if comm.is_main_process():  # the average of the finished epoch as a checkpoint of its own
            atomic_save(t.checkpoint(self.model, epoch=t.epoch), os.path.join(t.cfg.OUTPUT_DIR, "ema.pth"))

    def eval_model(self, t, model):
        return self.model

    def state_dict(self):
        return self.model.state_dict() if self.model is not None else self._loaded

    def load_state_dict(self, state):
        self._loaded = state
