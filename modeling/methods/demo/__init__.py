"""DeMo (AAAI 2025): PIFE, HDM and ATM on the shared encoder (MODEL.METHOD DeMo), and its config keys
(``MODEL.DEMO.*``; the official code's flat names ``MODEL.HDM``, ``MODEL.ATM`` and ``MODEL.HEAD`` are aliases.
``MODEL.GLOBAL_LOCAL`` is not: the authors' other codes (MDReID) use that flat name too, and an alias names one
key only).

The official recipe needs nothing of its own in the optimizer or the schedule: ``solver.param_rule`` gives the
official groups (biases x SOLVER.BIAS_LR_FACTOR with WEIGHT_DECAY_BIAS, the CLIP tower biases included at
5e-6, everything else, the camera table included, at BASE_LR) and the cosine schedule with its absolute
warmup, floor and LR noise is the engine's default.
"""
from layers import reid_loss
from utils.keyfacts import EVAL, MODEL, SHAPE, TRAIN, Key

from ..registry import MethodSpec, register_method
from .checkpoint import convert_official_state, recognizes, sizes, to_official_state
from .model import RETURN_PATTERNS, DeMo


def _key(name, default, facts, official=False):
    return Key("MODEL.DEMO." + name, default, facts, aliases=("MODEL." + name,) if official else ())


CONFIG_KEYS = (
    # PIFE (the official GLOBAL_LOCAL): each modality's global feature fuses its class token and mean patch
    # token (LayerNorm, Linear 2D -> D, QuickGELU); no: the class token alone.
    _key("GLOBAL_LOCAL", True, SHAPE),
    # HDM: learned queries over every subset of the modalities (R, N, T, RN, RT, NT, RNT), and the moe head.
    _key("HDM", True, SHAPE, official=True),
    # ATM: the attention-triggered mixture of experts over HDM's features (needs HDM); no: HDM's features
    # concatenated.
    _key("ATM", True, SHAPE, official=True),
    # ATM's chunks (heads) per feature: it must divide the token width (512 for ViT-B-16). Official recipes:
    # RGBNT201 4, RGBNT100 and MSVR310 8.
    _key("HEAD", 4, SHAPE(low=1), official=True),
    # HDM's attention heads; 0: the official width // 64 (8 for ViT-B-16; at least 1 for narrower tokens).
    _key("HDM_HEADS", 0, MODEL(low=0, what="an integer >= 0 (0: token width // 64)")),
    # Dropout of HDM's attention weights in training (official 0.1).
    _key("HDM_DROPOUT", 0.1, TRAIN(low=0.0, high=1.0, what="a probability in [0, 1]")),
    # The evaluation feature (the official return_pattern): 1 the global features [R, N, T]; 2 the moe
    # feature; 3 both (the official test and model selection). Without HDM always 1. A test setting: a
    # checkpoint may be evaluated with any of them, as the official training evaluates all three.
    _key("RETURN_PATTERN", 3, EVAL(choices=RETURN_PATTERNS)),
)


def build(cfg, backbone, num_classes, modalities):
    m = cfg.MODEL.DEMO
    return DeMo(backbone, num_classes, direct=bool(cfg.MODEL.DIRECT), modalities=modalities,
                global_local=m.GLOBAL_LOCAL, hdm=m.HDM, atm=m.ATM, moe_heads=m.HEAD, hdm_heads=m.HDM_HEADS,
                hdm_dropout=m.HDM_DROPOUT, return_pattern=m.RETURN_PATTERN, feat_norm=cfg.TEST.FEAT_NORM)


def loss(cfg):
    """ID + triplet on each head (moe and the global heads), the official weights MODEL.ID_LOSS_WEIGHT and
    MODEL.TRIPLET_LOSS_WEIGHT; no other term (the official MoE regulariser is weighted 0)."""
    return reid_loss(cfg, {})


DEMO = register_method(MethodSpec(
    name="DeMo", build=build, loss=loss, recognizes=recognizes, sizes=sizes, convert=convert_official_state,
    config_keys=CONFIG_KEYS, min_modalities=2,
    description="PIFE + HDM + ATM (decoupled features, mixture of experts) on the shared encoder (AAAI 2025)"))

__all__ = ["DeMo", "DEMO", "CONFIG_KEYS", "convert_official_state", "to_official_state"]
