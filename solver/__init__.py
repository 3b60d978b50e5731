"""Optimizer with per-parameter LR / weight-decay rules, and the epoch LR schedules.

The schedules are stepped with the 1-based epoch at the start of every epoch (``scheduler.step(epoch)``)
and reproduce the official recipe: timm's cosine schedule with warmup and seeded LR noise (RGBNT201,
RGBNT100) and a warmup multi-step schedule that decays at the milestone epochs themselves (MSVR310).
"""
import bisect

import torch
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler

from utils.versions import torch_version



def backbone_lr(cfg):
    """The backbone LR: SOLVER.BACKBONE_LR when >= 0 (0: BASE_LR x BACKBONE_LR_FACTOR); the default -1 is the
    official rule of the backbone's spec (``BackboneSpec.official_lr``: 5e-6 for the CLIP ViT-B-16, BASE_LR x
    BACKBONE_LR_FACTOR for the ImageNet ViT and the small ViT). A backbone without one needs an explicit value
    (checked with the config)."""
    s = cfg.SOLVER
    if s.BACKBONE_LR > 0:
        return s.BACKBONE_LR
    if s.BACKBONE_LR < 0:
        from modeling.backbone import backbone_spec
        return backbone_spec(cfg.MODEL.TRANSFORMER_TYPE).official_lr(s)
    return s.BASE_LR * s.BACKBONE_LR_FACTOR


def _layer_of(name, depth):
    """Layer index for per-layer LR decay: 0 for the embeddings (patches, class / register tokens,
    positions, camera table), i + 1 for block i, depth + 1 for the final norm and projection."""
    rest = name[len("backbone."):]
    if rest.startswith("vit.blocks."):
        return int(rest.split(".")[2]) + 1
    if rest.startswith(("vit.norm.", "vit.head.", "vit.fc_norm.")):
        return depth + 1
    return 0


def param_rule(cfg, name, depth=None, spec=None):
    """(lr, weight_decay) of parameter ``name`` under the recipe this field shares (Signal's, DeMo's, ...).

    Biases: LR x BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS. Then backbone parameters (biases included, names under
    the method's ``backbone_prefixes``): the backbone LR (``backbone_lr``), scaled by SOLVER.LAYER_DECAY **
    (depth + 1 - layer) when per-layer decay is on (``depth``: the backbone's number of blocks). Classifiers
    (the method's ``classifier_pattern``): x CLASSIFIER_LR_FACTOR (with WEIGHT_DECAY_BIAS when the factor is
    not 1, as the official MSVR310 recipe). ``spec``: the MethodSpec (default: MODEL.METHOD's); a method
    with its own ``param_rule`` answers instead, given this shared answer
    (``spec.param_rule(cfg, name, depth, shared)``).
    """
    if spec is None:
        from modeling.methods import method_spec
        spec = method_spec(cfg.MODEL.METHOD)
    shared = _shared_rule(cfg, name, depth, spec)
    return shared if spec.param_rule is None else spec.param_rule(cfg, name, depth, shared)


def _shared_rule(cfg, name, depth, spec):
    s = cfg.SOLVER
    lr, wd = s.BASE_LR, s.WEIGHT_DECAY
    if "bias" in name:
        lr, wd = s.BASE_LR * s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS
    if name.startswith(spec.backbone_prefixes):
        lr = backbone_lr(cfg)
        if s.LAYER_DECAY != 1.0 and depth is not None:
            lr *= s.LAYER_DECAY ** (depth + 1 - _layer_of(name, depth))
    if spec.is_classifier(name) and s.CLASSIFIER_LR_FACTOR != 1.0:
        lr, wd = s.BASE_LR * s.CLASSIFIER_LR_FACTOR, s.WEIGHT_DECAY_BIAS
    return lr, wd


def _fused_available(opt_name, device_type):
    """Whether the installed torch has the fused (single-kernel) ``opt_name`` for ``device_type``: CUDA
    Adam/AdamW since torch 2.0 and SGD since 2.3; CPU since 2.4 (older versions accept ``fused=True`` on
    the CPU and fail at the first step)."""
    version = torch_version()
    if device_type == "cuda":
        return version >= ((2, 3) if opt_name == "SGD" else (2, 0))
    return device_type == "cpu" and version >= (2, 4)


def build_optimizer(cfg, model):
    """Parameters sharing (lr, weight_decay) go into one group (same update as one group per tensor)."""
    groups = {}
    raw = model.module if hasattr(model, "module") else model
    depth = len(raw.backbone.vit.blocks) if hasattr(raw, "backbone") else None
    from modeling.methods import method_spec
    spec = method_spec(cfg.MODEL.METHOD)
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(param_rule(cfg, name, depth, spec), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    s = cfg.SOLVER
    types = {p.device.type for g in params for p in g["params"]}
    # Fused kernels (one pass over all tensors) where this torch has them; same update as the loop.
    fused = {"fused": True} if len(types) == 1 and _fused_available(s.OPTIMIZER_NAME, types.pop()) else {}
    if s.OPTIMIZER_NAME == "SGD":
        return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, **fused)
    opt_cls = torch.optim.AdamW if s.OPTIMIZER_NAME == "AdamW" else torch.optim.Adam
    return opt_cls(params, lr=s.BASE_LR, **fused)


def warmup_weight(t, warmup_t, warmup_factor):
    """The linear warmup's fraction of a group's LR at epoch ``t`` < ``warmup_t``: ``warmup_factor`` at 0,
    rising to 1 at ``warmup_t``."""
    alpha = t / warmup_t
    return warmup_factor * (1 - alpha) + alpha


class WarmupMultiStepScheduler(Scheduler):
    """Step decay with a linear warmup, stepped with the epoch.

    LR of group g at epoch t: ``lr_g x w(t) x gamma ** (number of milestones <= t)`` with
    ``w(t) = warmup_factor + (1 - warmup_factor) x t / warmup_t`` for ``t < warmup_t``, else 1. The decay
    takes effect at the milestone epoch itself, as in the official MSVR310 schedule (timm's
    ``MultiStepLRScheduler`` applies milestone m from epoch m - 1). The warmup is relative to each group's
    LR, unlike the cosine schedule's absolute ``warmup_lr_init``.

    Args:
        optimizer: its groups' ``lr`` are the base values.
        milestones: epochs at which the LR is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_t: warmup length in epochs (0: none).
        warmup_factor: LR fraction at epoch 0 of the warmup.
    """

    def __init__(self, optimizer, milestones, gamma: float = 0.1, warmup_t: int = 0, warmup_factor: float = 0.01):
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=True, initialize=True)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        self.warmup_t = warmup_t
        self.warmup_factor = warmup_factor

    def _get_lr(self, t):
        w = warmup_weight(t, self.warmup_t, self.warmup_factor) if t < self.warmup_t else 1.0
        decay = self.gamma ** bisect.bisect_right(self.milestones, t)
        return [v * w * decay for v in self.base_values]


class RelativeWarmupCosineScheduler(CosineLRScheduler):
    """timm's cosine schedule whose warmup starts each group at ``warmup_factor`` x its own LR (timm starts
    every group at one absolute ``warmup_lr_init``) and rises linearly to it over ``warmup_t`` epochs; the
    cosine part, its floor and the LR noise are timm's."""

    def __init__(self, optimizer, warmup_factor: float = 0.1, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.warmup_factor = warmup_factor
        if self.warmup_t:
            self.update_groups(self._get_lr(0))

    def _get_lr(self, t):
        if t < self.warmup_t:
            w = warmup_weight(t, self.warmup_t, self.warmup_factor)
            return [v * w for v in self.base_values]
        return super()._get_lr(t)


def noise_range(cfg):
    """SOLVER.LR_NOISE_RANGE (fractions of MAX_EPOCHS) as timm's ``noise_range_t`` in epochs, or None."""
    s = cfg.SOLVER
    if not s.LR_NOISE_RANGE:
        return None
    epochs = [int(round(r * s.MAX_EPOCHS)) for r in s.LR_NOISE_RANGE]
    return epochs[0] if len(epochs) == 1 else tuple(epochs)


def build_scheduler(cfg, optimizer):
    """Epoch-based schedule, stepped with the 1-based epoch at the start of each epoch."""
    s = cfg.SOLVER
    if s.SCHEDULER == "multistep":
        return WarmupMultiStepScheduler(optimizer, milestones=list(s.STEPS), gamma=s.GAMMA,
                                        warmup_t=s.WARMUP_ITERS, warmup_factor=s.WARMUP_FACTOR)
    kwargs = dict(t_initial=s.MAX_EPOCHS, lr_min=s.MIN_LR_FACTOR * s.BASE_LR, cycle_mul=1.0, cycle_decay=0.1,
                  warmup_lr_init=s.WARMUP_FACTOR * s.BASE_LR, warmup_t=s.WARMUP_ITERS, cycle_limit=1,
                  t_in_epochs=True, noise_range_t=noise_range(cfg), noise_pct=s.LR_NOISE_PCT,
                  noise_std=s.LR_NOISE_STD, noise_seed=s.LR_NOISE_SEED)
    if s.WARMUP_RELATIVE:
        return RelativeWarmupCosineScheduler(optimizer, warmup_factor=s.WARMUP_FACTOR, **kwargs)
    return CosineLRScheduler(optimizer, **kwargs)
