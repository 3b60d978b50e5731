"""Model construction and weight loading: the shared encoder (``backbone``), the method around it
(``methods``, chosen with MODEL.METHOD) and every checkpoint format (``weights``)."""
import logging

from utils.modalities import MODALITIES

from .backbone import BackboneSpec, Encoder, ViTBackbone, backbone_spec, build_backbone, create_vit, register_backbone
from .base import SharedEncoderModel
from .methods import (MethodSpec, checkpoint_meta, method_names, method_spec, method_specs, register_method,
                      stored_meta)
from .methods.signal import Signal
from .methods.signal.alignment import DeformableSampler, GlobalAlignment, LocalAlignment
from .methods.signal.branches import BranchSpec, branch_specs, build_branches, register_branch
from .methods.signal.sim import ModalInteraction, SelectiveInteraction, TokenSelection
from .weights import (WeightsError, check_trained_config, load_finetune, load_pretrained_backbone, load_weights,
                      model_sizes, model_state, read_checkpoint, read_weights, whole_model_state)

logger = logging.getLogger("signal.model")


def build_model(cfg, num_classes, num_cameras, pretrained=True, modalities=MODALITIES):
    """Build the method MODEL.METHOD of ``cfg`` for ``num_classes`` training identities, ``num_cameras``
    cameras and the dataset's ``modalities`` (in batch order).

    MODEL.PRETRAIN_PATH is either a backbone checkpoint (CLIP / timm) or a whole model (a run's ``best.pth`` /
    ``last.pth`` or the authors' release), which fine-tunes from that model (``weights.load_finetune``).
    ``pretrained=False`` skips MODEL.PRETRAIN_PATH (when a full checkpoint is loaded afterwards). The model
    carries ``checkpoint_meta`` ({method, num_classes, num_cameras, modalities}), which its checkpoints store."""
    m = cfg.MODEL
    spec = method_spec(m.METHOD)
    spec.check_modalities(tuple(modalities), "the model's input")
    backbone = build_backbone(cfg, num_cameras)
    state = read_weights(m.PRETRAIN_PATH) if pretrained and m.PRETRAIN_PATH else None
    whole = whole_model_state(state) if state is not None else None
    if state is not None and whole is None:
        load_pretrained_backbone(backbone, m.PRETRAIN_PATH, state)
    elif pretrained and not backbone_spec(m.TRANSFORMER_TYPE).small:
        logger.warning("!" * 80)
        logger.warning("MODEL.PRETRAIN_PATH is empty: the %s backbone starts from RANDOM weights. "
                       "Set MODEL.PRETRAIN_PATH to a local checkpoint to reproduce published results.",
                       m.TRANSFORMER_TYPE)
        logger.warning("!" * 80)
    model = spec.build(cfg, backbone, num_classes, tuple(modalities))
    model.checkpoint_meta = {"method": spec.name, "num_classes": int(num_classes), "num_cameras": int(num_cameras),
                             "modalities": list(modalities)}
    if whole is not None:
        load_finetune(model, whole, m.PRETRAIN_PATH)
    return model


def build_loss(cfg):
    """The loss module of the method MODEL.METHOD: ``loss(outputs, target)`` -> {name: weighted term}."""
    return method_spec(cfg.MODEL.METHOD).loss(cfg)


def load_eval_model(cfg, path, modalities=None):
    """The model of checkpoint ``path`` for evaluation: sized from the checkpoint (the identity count, camera
    table and modalities it stores or its keys tell, so neither the training split nor the config's benchmark
    is needed), weights loaded, the camera embedding following TEST.CAMERA_EMBEDDING. ``modalities``: those
    of the data it will see (a checkpoint without stored modalities is built for them; one that stores some
    the data lacks is refused). Returns (model, rows of its camera table)."""
    state = read_weights(path)
    check_trained_config(state, cfg, path)
    num_classes, num_cameras = model_sizes(state, path, cfg.MODEL.METHOD)
    stored = stored_meta(state).get("modalities")
    if stored and modalities is not None and not set(stored) <= set(modalities):
        raise WeightsError(f"{path} was trained on the modalities {', '.join(stored)}; the data "
                           f"({cfg.DATASETS.NAMES}) has {', '.join(modalities)}: the model needs "
                           f"{', '.join(m for m in stored if m not in modalities)} too")
    modalities = stored or modalities or MODALITIES
    model = build_model(cfg, num_classes, num_cameras, pretrained=False, modalities=tuple(modalities))
    load_weights(model, path, state)
    model.backbone.camera_mode = cfg.TEST.CAMERA_EMBEDDING
    return model, num_cameras


__all__ = ["build_model", "build_loss", "load_eval_model", "load_weights", "load_pretrained_backbone", "Signal",
           "SharedEncoderModel", "ViTBackbone", "create_vit", "read_checkpoint", "read_weights", "model_state",
           "BackboneSpec", "Encoder", "backbone_spec", "BranchSpec", "branch_specs", "build_branches",
           "register_branch", "build_backbone", "register_backbone", "MethodSpec", "register_method",
           "method_names", "method_spec", "method_specs", "checkpoint_meta", "stored_meta",
           "SelectiveInteraction", "TokenSelection", "ModalInteraction", "GlobalAlignment", "LocalAlignment",
           "DeformableSampler", "WeightsError", "MODALITIES"]
