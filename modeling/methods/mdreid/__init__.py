"""MDReID (NeurIPS 2025): modality-specific and modality-shared features from the shared encoder, decoupled by
an orthogonality loss and a modality-aware ratio triplet loss; at test time only the present modalities are
encoded. MODEL.METHOD MDReID; its keys are ``MODEL.MDREID.*`` (the authors' ``MODEL.ADD_SHARE``,
``MODEL.ADD_ELOSS`` and ``MODEL.ADD_CLOSS`` are aliases).

Where the authors' code (github.com/stone96123/MDReID) has a defect, a switch reproduces it; the default is
the corrected behaviour only where that changes no released figure:
  * ELOSS_HEADS: their [specific ; shared] heads (``_rs``, ``_ns``, ``_ts``), which no loss reads (the RGB one
    runs on all three modalities, ``_ns`` / ``_ts`` never; ``bottleneck_ts`` skips the init function, which
    changes nothing: BatchNorm's defaults are that init): not built by default; the converter drops them from
    their checkpoints.
  * POOL_SHARED_IN_TRAINING: under GLOBAL_LOCAL their training mean token also covers the shared token, their
    evaluation's does not: by default both average the patches (no released config sets GLOBAL_LOCAL).
  * SHARED_TOKEN_BASE_LR: their optimizer rule meant the shared token to train at BASE_LR, but the token is the
    class embedding's parameter and trains at the backbone LR: kept by default (the released recipe).
"""

from layers import reid_loss
from utils.keyfacts import SHAPE, TRAIN, Key

from ..registry import MethodSpec, register_method
from .checkpoint import convert_official_state, recognizes, sizes
from .loss import MDReIDLoss
from .model import MDReID


def _key(name, default, facts, official=False):
    return Key("MODEL.MDREID." + name, default, facts, aliases=("MODEL." + name,) if official else ())


CONFIG_KEYS = (
    # The shared token after the class token (a position-embedding row more), its head and the present-only
    # evaluation feature [g_m ; s_m of the present modalities].
    _key("ADD_SHARE", True, SHAPE, official=True),
    # The modality-aware ratio triplet loss on [g_m ; s_m] (needs ADD_SHARE), weighted by RATIO_WEIGHT.
    _key("ADD_ELOSS", True, TRAIN, official=True),
    # The orthogonality loss on each sample's Gram matrix of [g_1..g_M, s_1..s_M] (needs ADD_SHARE).
    _key("ADD_CLOSS", True, TRAIN, official=True),
    # The authors' hard-coded weights: orthogonality (lambda1), ratio (lambda2), the shared head's ID + triplet.
    _key("ORTH_WEIGHT", 1.5, TRAIN(low=0.0, what="a weight >= 0")),
    _key("RATIO_WEIGHT", 5.25, TRAIN(low=0.0, what="a weight >= 0")),
    _key("SHARED_HEAD_WEIGHT", 3.0, TRAIN(low=0.0, what="a weight >= 0")),
    # The specific feature is LayerNorm -> Linear -> QuickGELU of [class token ; mean patch token] per modality
    # (the authors' MODEL.GLOBAL_LOCAL; that flat name belongs to DeMo here).
    _key("GLOBAL_LOCAL", False, SHAPE),
    # yes (authors' code): under GLOBAL_LOCAL with ADD_SHARE the training mean token also averages the shared
    # token, while their evaluation averages the patches only. no: the patches in training too.
    _key("POOL_SHARED_IN_TRAINING", False, TRAIN),
    # yes (authors' layout): also build their [specific ; shared] heads (with ADD_ELOSS and MODEL.DIRECT 0),
    # frozen: no loss reads them, only their BN statistics move. no: not built (their checkpoints' copies dropped).
    _key("ELOSS_HEADS", False, SHAPE),
    # no (authors' recipe): the shared token, being the class embedding, trains at the backbone LR. yes: the
    # class embedding trains at BASE_LR, as their rule for the shared token intended.
    _key("SHARED_TOKEN_BASE_LR", False, TRAIN),
)


def check_switches(cfg):
    """Refuse switch combinations that have no meaning (ValueError naming the keys)."""
    m = cfg.MODEL.MDREID
    for name in ("ADD_ELOSS", "ADD_CLOSS"):
        if m[name] and not m.ADD_SHARE:
            raise ValueError(f"config: MODEL.MDREID.{name} (MODEL.{name}) needs MODEL.MDREID.ADD_SHARE yes: its loss "
                             f"reads the shared tokens")


def build(cfg, backbone, num_classes, modalities):
    check_switches(cfg)
    m = cfg.MODEL.MDREID
    return MDReID(backbone, num_classes, direct=bool(cfg.MODEL.DIRECT), add_share=m.ADD_SHARE,
                  global_local=m.GLOBAL_LOCAL, pool_shared_in_training=m.POOL_SHARED_IN_TRAINING,
                  eloss_heads=m.ELOSS_HEADS and m.ADD_ELOSS, feat_norm=cfg.TEST.FEAT_NORM, modalities=modalities)


def loss(cfg):
    """ID + triplet per head (the shared head's x SHARED_HEAD_WEIGHT), orthogonality and ratio terms."""
    check_switches(cfg)
    m = cfg.MODEL.MDREID
    return MDReIDLoss(reid_loss(cfg, {}), shared_head_weight=m.SHARED_HEAD_WEIGHT,
                      orth_weight=m.ORTH_WEIGHT if m.ADD_CLOSS else 0.0,
                      ratio_weight=m.RATIO_WEIGHT if m.ADD_ELOSS else 0.0,
                      official_precision=not cfg.SOLVER.AMP_FP32_LOSSES, gather=cfg.SOLVER.GATHER_EMBEDDINGS)


# With the shared token the whole position embedding (the encoder's rows and the shared token's) trains at BASE_LR.
_POSITIONS = ("backbone.vit.pos_embed", "shared_pos_embed")


def param_rule(cfg, name, depth, shared):
    """(lr, weight decay): the shared recipe's answer ``shared`` (``solver.param_rule``: biases, the encoder at
    the backbone LR, classifiers), then with ADD_SHARE the position embedding at BASE_LR (and, with
    SHARED_TOKEN_BASE_LR, the class embedding, which is the shared token)."""
    lr, wd = shared
    m = cfg.MODEL.MDREID
    if m.ADD_SHARE and (name in _POSITIONS or (m.SHARED_TOKEN_BASE_LR and name == "backbone.vit.cls_token")):
        lr = cfg.SOLVER.BASE_LR
    return lr, wd


MDREID = register_method(MethodSpec(
    name="MDReID", build=build, loss=loss, recognizes=recognizes, sizes=sizes, convert=convert_official_state,
    param_rule=param_rule, config_keys=CONFIG_KEYS, min_modalities=2,
    description="modality-specific and shared tokens, decoupling losses, present-only test features (NeurIPS 2025)"))
