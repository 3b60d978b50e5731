"""Optimizer with per-parameter LR / weight-decay rules, and the LR schedules (timm)."""
import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler


def param_rule(cfg, name):
    """(lr, weight_decay) of parameter ``name`` under the Signal recipe.

    Biases: LR x BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS. Then backbone parameters (biases included): a fixed
    BACKBONE_LR for CLIP, BASE_LR x BACKBONE_LR_FACTOR otherwise. Classifiers: x CLASSIFIER_LR_FACTOR
    (with WEIGHT_DECAY_BIAS when the factor is not 1, as the official MSVR310 recipe).
    """
    s = cfg.SOLVER
    lr, wd = s.BASE_LR, s.WEIGHT_DECAY
    if "bias" in name:
        lr, wd = s.BASE_LR * s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS
    if name.startswith("backbone.vit."):
        lr = s.BACKBONE_LR if cfg.MODEL.TRANSFORMER_TYPE == "ViT-B-16" else s.BASE_LR * s.BACKBONE_LR_FACTOR
    if "classifier" in name and s.CLASSIFIER_LR_FACTOR != 1.0:
        lr, wd = s.BASE_LR * s.CLASSIFIER_LR_FACTOR, s.WEIGHT_DECAY_BIAS
    return lr, wd


def build_optimizer(cfg, model):
    """Parameters sharing (lr, weight_decay) go into one group (same update as one group per tensor)."""
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(param_rule(cfg, name), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    s = cfg.SOLVER
    # Fused kernels (one pass over all tensors) on CPU and CUDA; far faster than the per-tensor loop.
    types = {p.device.type for g in params for p in g["params"]}
    fused = True if len(types) == 1 and types <= {"cpu", "cuda"} else None
    if s.OPTIMIZER_NAME == "SGD":
        return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, fused=fused)
    opt_cls = torch.optim.AdamW if s.OPTIMIZER_NAME == "AdamW" else torch.optim.Adam
    return opt_cls(params, lr=s.BASE_LR, fused=fused)


def build_scheduler(cfg, optimizer):
    """Epoch-based schedule, stepped with the 1-based epoch at the start of each epoch."""
    s = cfg.SOLVER
    warmup_lr = s.WARMUP_FACTOR * s.BASE_LR
    if s.SCHEDULER == "multistep":
        return MultiStepLRScheduler(optimizer, decay_t=list(s.STEPS), decay_rate=s.GAMMA, warmup_t=s.WARMUP_ITERS,
                                    warmup_lr_init=warmup_lr, warmup_prefix=False, t_in_epochs=True)
    noise = [int(r * s.MAX_EPOCHS) for r in s.LR_NOISE_RANGE] if s.LR_NOISE_RANGE else None
    if noise is not None and len(noise) == 1:
        noise = noise[0]
    return CosineLRScheduler(optimizer, t_initial=s.MAX_EPOCHS, lr_min=s.MIN_LR_FACTOR * s.BASE_LR, cycle_mul=1.0,
                             cycle_decay=0.1, warmup_lr_init=warmup_lr, warmup_t=s.WARMUP_ITERS, cycle_limit=1,
                             t_in_epochs=True, noise_range_t=noise, noise_pct=s.LR_NOISE_PCT,
                             noise_std=s.LR_NOISE_STD, noise_seed=s.LR_NOISE_SEED)
