"""Baseline: the shared encoder and its class-token heads, nothing else (MODEL.METHOD Baseline).

The starting point every method of the field reports against: the modalities stacked through one ViT with
SIE, one BN-neck head on the concatenated class tokens (MODEL.DIRECT yes) or one per modality (no), the ID
loss on the logits after the neck and the triplet loss on the feature before it. The evaluation feature is
the concatenated class tokens, L2-normalised when TEST.FEAT_NORM is set.
"""
import torch.nn.functional as F

from layers import reid_loss
from utils.modalities import MODALITIES

from ..registry import MethodSpec, register_method
from ...base import SharedEncoderModel, class_token_sizes


class Baseline(SharedEncoderModel):
    """Args: as ``SharedEncoderModel``, plus ``feat_norm``: L2-normalise the evaluation feature."""

    def __init__(self, backbone, num_classes: int, direct: bool = True, feat_norm: bool = True,
                 modalities=MODALITIES):
        super().__init__(backbone, num_classes, direct, modalities)
        self.feat_norm = feat_norm

    @property
    def feat_dim(self):
        return len(self.modalities) * self.backbone.out_dim

    def forward(self, images, cam_label=None):
        cls, _ = self.encode(images, cam_label)
        if not self.training:
            feat = cls.flatten(1)
            return F.normalize(feat, dim=1) if self.feat_norm else feat
        return {"heads": self.class_token_heads(cls)}


def build(cfg, backbone, num_classes, modalities):
    return Baseline(backbone, num_classes, direct=bool(cfg.MODEL.DIRECT), feat_norm=cfg.TEST.FEAT_NORM,
                    modalities=modalities)


def loss(cfg):
    """ID + triplet on each class-token head."""
    return reid_loss(cfg, {})


def recognizes(state):
    """This project's layout with the shared encoder and class-token heads only (``backbone.*``,
    ``bottleneck*``, ``classifier*``). Signal with every branch off has the same keys, so a plain state dict
    fits both; the ``meta`` of this project's checkpoints names the method."""
    return any(k.startswith("backbone.vit.") for k in state) and \
        all(k.startswith(("backbone.", "bottleneck", "classifier")) for k in state)


BASELINE = register_method(MethodSpec(
    name="Baseline", build=build, loss=loss, recognizes=recognizes, sizes=class_token_sizes,
    description="the shared encoder and its class-token heads only"))
