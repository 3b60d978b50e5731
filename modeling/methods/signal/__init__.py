"""Signal (AAAI 2026): Selective Interaction (SIM), Global Alignment (GAM) and Local Alignment (LAM) on the
shared encoder. MODEL.METHOD Signal (the default); its branches are in ``branches/``."""
from layers import reid_loss

from ..registry import MethodSpec, register_method
from .branches import branch_config_keys, branch_specs, build_branches
from .checkpoint import convert_official_state, recognizes, sizes
from .model import Signal


def build(cfg, backbone, num_classes, modalities):
    branches = build_branches(cfg, backbone.out_dim, backbone.grid, modalities)
    return Signal(backbone, num_classes, direct=bool(cfg.MODEL.DIRECT), branches=branches,
                  feat_norm=cfg.TEST.FEAT_NORM, modalities=modalities)


def loss(cfg):
    """The shared ID + triplet terms per head, each branch's term weighted by its spec."""
    return reid_loss(cfg, {s.name: s.loss_weight(cfg) for s in branch_specs() if s.loss_weight is not None})


SIGNAL = register_method(MethodSpec(
    name="Signal", build=build, loss=loss, recognizes=recognizes, sizes=sizes, convert=convert_official_state,
    config_keys=branch_config_keys, min_modalities=2,
    description="SIM + GAM + LAM on the shared encoder (AAAI 2026)"))
