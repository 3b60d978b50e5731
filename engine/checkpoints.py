"""What a checkpoint of a run holds: ``model_checkpoint`` (weights, sizes, config: ``best.pth``, ``ema.pth``,
the numbered ones) and ``training_state`` (everything a resumed run needs: ``last.pth``)."""
from modeling import checkpoint_meta
from utils.checkpoint import rng_state


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
