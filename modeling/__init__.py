"""Model construction and weight loading."""
import logging

from .alignment import DeformableSampler, GlobalAlignment, LocalAlignment
from .backbone import ViTBackbone, create_vit
from .signal import MODALITIES, Signal
from .sim import ModalInteraction, SelectiveInteraction, TokenSelection
from .weights import WeightsError, load_pretrained_backbone, load_weights

logger = logging.getLogger("signal.model")


def build_model(cfg, num_classes, num_cameras, pretrained=True):
    """Build Signal from ``cfg`` for ``num_classes`` training identities and ``num_cameras`` cameras.

    ``pretrained=False`` skips MODEL.PRETRAIN_PATH (when a full checkpoint is loaded afterwards)."""
    m = cfg.MODEL
    vit = create_vit(m.TRANSFORMER_TYPE, cfg.INPUT.SIZE_TRAIN, drop_path=m.DROP_PATH, drop=m.DROP_OUT,
                     attn_drop=m.ATT_DROP_RATE, custom=dict(m.CUSTOM_VIT))
    backbone = ViTBackbone(vit, num_cameras if m.SIE_CAMERA else 0, m.SIE_COE)
    backbone.set_fused_attn(m.FUSED_ATTN)
    if pretrained and m.PRETRAIN_PATH:
        load_pretrained_backbone(backbone, m.PRETRAIN_PATH)
    elif pretrained and m.TRANSFORMER_TYPE != "vit_custom":
        logger.warning("!" * 80)
        logger.warning("MODEL.PRETRAIN_PATH is empty: the %s backbone starts from RANDOM weights. "
                       "Set MODEL.PRETRAIN_PATH to a local checkpoint to reproduce published results.",
                       m.TRANSFORMER_TYPE)
        logger.warning("!" * 80)
    d = backbone.out_dim
    sim = SelectiveInteraction(d, m.TOPK, m.SIM_HEADS, m.SIM_MASK_UNSELECTED) if m.USE_SIM else None
    gam = GlobalAlignment(m.GAM_TEMPERATURE) if m.USE_GAM else None
    lam = LocalAlignment(d, backbone.grid, MODALITIES, m.LAM_KERNEL, m.LAM_STRIDE, m.LAM_OFFSET_RANGE,
                         m.LAM_OFFSET_CHANNELS) if m.USE_LAM else None
    return Signal(backbone, num_classes, direct=bool(m.DIRECT), sim=sim, gam=gam, lam=lam,
                  feat_norm=cfg.TEST.FEAT_NORM)


__all__ = ["build_model", "load_weights", "load_pretrained_backbone", "Signal", "ViTBackbone", "create_vit",
           "SelectiveInteraction", "TokenSelection", "ModalInteraction", "GlobalAlignment", "LocalAlignment",
           "DeformableSampler", "WeightsError", "MODALITIES"]
