"""The three branches of Signal (AAAI 2026): SIM (a feature), GAM and LAM (loss terms), and their config keys
(``MODEL.SIGNAL.*``; the flat names of the official code, ``MODEL.TOPK`` and so on, are aliases)."""
from utils.keyfacts import MODEL, SHAPE, TRAIN, Key

from ..alignment import GlobalAlignment, LocalAlignment
from ..sim import SelectiveInteraction
from . import BranchSpec, register_branch


def _key(name, default, facts):
    return Key("MODEL.SIGNAL." + name, default, facts, aliases=("MODEL." + name,))


SIM_KEYS = (
    # Selective Interaction Module (SIM).
    _key("USE_SIM", True, SHAPE),
    # Intra-modal top-k (inter-modal keeps 2k of the other two modalities' patches).
    _key("TOPK", 80, MODEL(low=1)),
    # False (official code): unselected patches are multiplied by zero but stay in the key/value sequence.
    # True (the paper's wording): unselected patches are masked out of the cross-attention.
    _key("SIM_MASK_UNSELECTED", False, MODEL),
    # Number of heads of SIM's cross-attention.
    _key("SIM_HEADS", 8, SHAPE(low=1)),
)
GAM_KEYS = (
    # Global Alignment Module (GAM): Gram-determinant volume loss on mean patch tokens.
    _key("USE_GAM", True, SHAPE),
    _key("GAM_WEIGHT", 0.2, TRAIN(low=0.0, what="a weight >= 0")),
    # Initial value of GAM's learnable temperature.
    _key("GAM_TEMPERATURE", 0.07, TRAIN(low=1e-12, what="a temperature > 0")),
)
LAM_KEYS = (
    # Local Alignment Module (LAM): deformable sampling + pairwise MSE (a training loss only).
    _key("USE_LAM", True, SHAPE),
    _key("LAM_WEIGHT", 0.2, TRAIN(low=0.0, what="a weight >= 0")),
    # 1 (official code): one offset channel broadcast to both axes. 2 (the paper's wording): independent
    # y and x offsets.
    _key("LAM_OFFSET_CHANNELS", 1, SHAPE(choices=(1, 2))),
    # Kernel size and stride of LAM's depthwise offset convolution; scale of the tanh offsets.
    _key("LAM_KERNEL", 4, SHAPE(low=1)),
    _key("LAM_STRIDE", 4, SHAPE(low=1)),
    _key("LAM_OFFSET_RANGE", 2.0, TRAIN),
)


def _sim(cfg, width, grid, modalities):
    m = cfg.MODEL.SIGNAL
    return SelectiveInteraction(width, m.TOPK, m.SIM_HEADS, m.SIM_MASK_UNSELECTED,
                                num_modalities=len(modalities)) if m.USE_SIM else None


def _gam(cfg, width, grid, modalities):
    return GlobalAlignment(cfg.MODEL.SIGNAL.GAM_TEMPERATURE, official_precision=not cfg.SOLVER.AMP_FP32_LOSSES,
                           gather=cfg.SOLVER.GATHER_EMBEDDINGS) if cfg.MODEL.SIGNAL.USE_GAM else None


def _lam(cfg, width, grid, modalities):
    m = cfg.MODEL.SIGNAL
    return LocalAlignment(width, grid, modalities, kernel_size=m.LAM_KERNEL, stride=m.LAM_STRIDE,
                          offset_range=m.LAM_OFFSET_RANGE, offset_channels=m.LAM_OFFSET_CHANNELS) if m.USE_LAM else None


register_branch(BranchSpec("sim", _sim, order=10, config_keys=SIM_KEYS))
register_branch(BranchSpec("gam", _gam, order=20, loss_weight=lambda cfg: cfg.MODEL.SIGNAL.GAM_WEIGHT,
                           config_keys=GAM_KEYS))
register_branch(BranchSpec("lam", _lam, order=30, loss_weight=lambda cfg: cfg.MODEL.SIGNAL.LAM_WEIGHT,
                           config_keys=LAM_KEYS))
