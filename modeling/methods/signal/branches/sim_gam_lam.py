"""The three branches of Signal (AAAI 2026): SIM (a feature), GAM and LAM (loss terms)."""
from ..alignment import GlobalAlignment, LocalAlignment
from ..sim import SelectiveInteraction
from . import BranchSpec, register_branch


def _sim(cfg, width, grid):
    m = cfg.MODEL
    return SelectiveInteraction(width, m.TOPK, m.SIM_HEADS, m.SIM_MASK_UNSELECTED) if m.USE_SIM else None


def _gam(cfg, width, grid):
    return GlobalAlignment(cfg.MODEL.GAM_TEMPERATURE, official_precision=not cfg.SOLVER.AMP_FP32_LOSSES,
                           gather=cfg.SOLVER.GATHER_EMBEDDINGS) if cfg.MODEL.USE_GAM else None


def _lam(cfg, width, grid):
    m = cfg.MODEL
    return LocalAlignment(width, grid, kernel_size=m.LAM_KERNEL, stride=m.LAM_STRIDE, offset_range=m.LAM_OFFSET_RANGE,
                          offset_channels=m.LAM_OFFSET_CHANNELS) if m.USE_LAM else None


register_branch(BranchSpec("sim", _sim, order=10, shape_keys=("MODEL.USE_SIM", "MODEL.SIM_HEADS"),
                           model_keys=("MODEL.USE_SIM", "MODEL.TOPK", "MODEL.SIM_MASK_UNSELECTED", "MODEL.SIM_HEADS")))
register_branch(BranchSpec("gam", _gam, order=20, loss_weight=lambda cfg: cfg.MODEL.GAM_WEIGHT,
                           shape_keys=("MODEL.USE_GAM",), model_keys=("MODEL.USE_GAM",)))
register_branch(BranchSpec("lam", _lam, order=30, loss_weight=lambda cfg: cfg.MODEL.LAM_WEIGHT,
                           shape_keys=("MODEL.USE_LAM", "MODEL.LAM_OFFSET_CHANNELS", "MODEL.LAM_KERNEL",
                                       "MODEL.LAM_STRIDE"),
                           model_keys=("MODEL.USE_LAM", "MODEL.LAM_")))
