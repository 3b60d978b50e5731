"""Model construction and weight loading."""
import logging

from .alignment import DeformableSampler, GlobalAlignment, LocalAlignment
from .branches import BranchSpec, branch_specs, build_branches, register_branch
from .backbone import BackboneSpec, Encoder, ViTBackbone, backbone_spec, build_backbone, create_vit, register_backbone
from .signal import MODALITIES, Signal
from .sim import ModalInteraction, SelectiveInteraction, TokenSelection
from .weights import (WeightsError, check_trained_config, load_finetune, load_pretrained_backbone, load_weights,
                      model_sizes, model_state, read_checkpoint, read_weights, signal_model_state)

logger = logging.getLogger("signal.model")


def build_model(cfg, num_classes, num_cameras, pretrained=True):
    """Build Signal from ``cfg`` for ``num_classes`` training identities and ``num_cameras`` cameras.

    MODEL.PRETRAIN_PATH is either a backbone checkpoint (CLIP / timm) or a whole Signal model (a run's
    ``best.pth`` / ``last.pth`` or the official checkpoint), which fine-tunes from that model
    (``weights.load_finetune``). ``pretrained=False`` skips MODEL.PRETRAIN_PATH (when a full checkpoint is
    loaded afterwards)."""
    m = cfg.MODEL
    backbone = build_backbone(cfg, num_cameras)
    state = read_weights(m.PRETRAIN_PATH) if pretrained and m.PRETRAIN_PATH else None
    whole = signal_model_state(state) if state is not None else None
    if state is not None and whole is None:
        load_pretrained_backbone(backbone, m.PRETRAIN_PATH, state)
    elif pretrained and not backbone_spec(m.TRANSFORMER_TYPE).small:
        logger.warning("!" * 80)
        logger.warning("MODEL.PRETRAIN_PATH is empty: the %s backbone starts from RANDOM weights. "
                       "Set MODEL.PRETRAIN_PATH to a local checkpoint to reproduce published results.",
                       m.TRANSFORMER_TYPE)
        logger.warning("!" * 80)
    model = Signal(backbone, num_classes, direct=bool(m.DIRECT), branches=build_branches(cfg, backbone.out_dim,
                                                                                         backbone.grid),
                   feat_norm=cfg.TEST.FEAT_NORM)
    if whole is not None:
        load_finetune(model, whole, m.PRETRAIN_PATH)
    return model


def load_eval_model(cfg, path):
    """The model of checkpoint ``path`` for evaluation: sized from the checkpoint (its identity count and
    camera table, so neither the training split nor the config's benchmark is needed), weights loaded, the
    camera embedding following TEST.CAMERA_EMBEDDING. Returns (model, rows of its camera table)."""
    state = read_weights(path)
    check_trained_config(state, cfg, path)
    num_classes, num_cameras = model_sizes(state, path)
    model = build_model(cfg, num_classes, num_cameras, pretrained=False)
    load_weights(model, path, state)
    model.backbone.camera_mode = cfg.TEST.CAMERA_EMBEDDING
    return model, num_cameras


__all__ = ["build_model", "load_eval_model", "load_weights", "load_pretrained_backbone", "Signal", "ViTBackbone", "create_vit",
           "read_checkpoint", "read_weights", "model_state", "BackboneSpec", "Encoder", "backbone_spec", "BranchSpec", "branch_specs", "build_branches", "register_branch", "build_backbone", "register_backbone",
           "SelectiveInteraction", "TokenSelection", "ModalInteraction", "GlobalAlignment", "LocalAlignment",
           "DeformableSampler", "WeightsError", "MODALITIES"]
