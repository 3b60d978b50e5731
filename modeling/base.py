"""What the methods of this field share: one encoder for every modality, BN-neck heads on its class tokens.

TOP-ReID, DeMo, MDReID, MFRNet and Signal all start from the same model: the modalities stacked into one
batch through one ViT with SIE, then either one head on the concatenated class tokens (``direct``) or one
head per modality; a head is a BatchNorm neck (frozen zero bias) and a bias-free linear classifier; the ID
loss reads the logits after the neck, the triplet loss the feature before it.
"""
import torch
import torch.nn as nn

from utils.modalities import MODALITIES


def bn_neck(dim):
    """BatchNorm neck with a frozen zero bias and unit weight."""
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def classifier(dim, num_classes):
    """Bias-free linear classifier, weights drawn from normal(std 0.001)."""
    fc = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc


class SharedEncoderModel(nn.Module):
    """The shared encoder and the class-token heads.

    Args:
        backbone: an ``Encoder`` shared by the modalities (modeling/backbone.py).
        num_classes: training identities.
        direct: one head on the concatenated class tokens (True: ``bottleneck`` / ``classifier``) or one per
            modality (False: ``bottlenecks[m]`` / ``classifiers[m]``).
        modalities: the modality names of a batch, in order (the dataset's).
    """

    def __init__(self, backbone, num_classes: int, direct: bool = True, modalities=MODALITIES):
        super().__init__()
        self.backbone = backbone
        self.modalities = tuple(modalities)
        d, M = backbone.out_dim, len(self.modalities)
        self.direct = direct
        if direct:
            self.bottleneck = bn_neck(M * d)
            self.classifier = classifier(M * d, num_classes)
        else:
            self.bottlenecks = nn.ModuleDict({m: bn_neck(d) for m in self.modalities})
            self.classifiers = nn.ModuleDict({m: classifier(d, num_classes) for m in self.modalities})

    def encode(self, images, cam_label=None):
        """Shared backbone on the stacked modalities -> (class tokens [B, M, D], patches [B, M, N, D])."""
        M = len(self.modalities)
        x = torch.cat([images[m] for m in self.modalities], 0)
        B = x.shape[0] // M
        cams = cam_label.repeat(M) if cam_label is not None else None
        cls, patches = self.backbone(x, cams)
        cls = cls.view(M, B, -1).transpose(0, 1)
        patches = patches.view(M, B, *patches.shape[1:]).transpose(0, 1)
        return cls, patches

    def class_token_heads(self, cls):
        """{head name: {'score': logits after the neck, 'feat': feature before it}} of the class tokens
        ``cls`` [B, M, D]: ``global`` (direct) or one per modality."""
        if self.direct:
            g = cls.flatten(1)
            return {"global": {"score": self.classifier(self.bottleneck(g)), "feat": g}}
        return {m: {"score": self.classifiers[m](self.bottlenecks[m](cls[:, i])), "feat": cls[:, i]}
                for i, m in enumerate(self.modalities)}


def class_token_sizes(state):
    """(identity count, camera-table rows; 0 without SIE) of a state dict in this layout, read from the
    class-token classifiers (``classifier`` or ``classifiers.<modality>``) and ``backbone.cam_embed``; None for
    the identity count when there is no classifier."""
    classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else next(
        (v.shape[0] for k, v in state.items() if k.startswith("classifiers.") and k.endswith(".weight")), None)
    cams = state["backbone.cam_embed"].shape[0] if "backbone.cam_embed" in state else 0
    return classes, cams
