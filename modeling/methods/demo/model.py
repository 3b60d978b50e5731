"""DeMo: Decoupled Feature-Based Mixture of Experts for Multi-Modal Object Re-Identification (Wang, Liu, Zheng,
Zhang, AAAI 2025).

The modalities go through the shared encoder (stacked into one batch; the official code calls it once per
modality, with the same result). Each modality's global feature is its class token, or with PIFE
(``global_local``) its class token and mean patch token fused. HDM decouples the tokens into 2^M - 1
modality-specific and shared features; ATM mixes them with attention-triggered experts (or, with HDM alone,
they are concatenated): the "moe" feature, with its own BN-neck head (``bottleneck_moe`` / ``classifier_moe``).
The global features get the shared class-token heads: one on their concatenation (``direct``) or one per
modality. Training returns ``{'heads': ...}`` (ID + triplet on each head, no other term: the official MoE
regulariser is weighted 0); evaluation returns the official ``return_pattern`` feature before BN: 1 the global
features, 2 the moe feature, 3 both (the official test and model selection).
"""
import torch
import torch.nn.functional as F

from utils.modalities import MODALITIES

from ...base import SharedEncoderModel, bn_neck, classifier
from .modules import AttentionTriggeredMixture, HierarchicalDecoupling, PatchIntegration

RETURN_PATTERNS = (1, 2, 3)


class DeMo(SharedEncoderModel):
    """Args:
        backbone: an ``Encoder`` shared by the modalities (modeling/backbone.py).
        num_classes: training identities.
        direct: one head on the concatenated global features (True) or one head per modality (False).
        modalities: the modality names of a batch, in order.
        global_local: PIFE (class token + mean patch token per modality); off: the class token.
        hdm: the hierarchical decoupling module (and the moe head).
        atm: the mixture of experts over HDM's features (needs ``hdm``).
        moe_heads: ATM's chunks per feature (MODEL.DEMO.HEAD).
        hdm_heads: attention heads of HDM; 0: the official ``width // 64`` (at least 1).
        hdm_dropout: dropout of HDM's attention weights in training.
        return_pattern: the evaluation feature (1, 2, 3; see the module docstring); without HDM always 1.
        feat_norm: L2-normalise the evaluation feature.
    """

    def __init__(self, backbone, num_classes: int, direct: bool = True, modalities=MODALITIES,
                 global_local: bool = True, hdm: bool = True, atm: bool = True, moe_heads: int = 4,
                 hdm_heads: int = 0, hdm_dropout: float = 0.1, return_pattern: int = 3, feat_norm: bool = True):
        super().__init__(backbone, num_classes, direct, modalities)
        if atm and not hdm:
            raise ValueError("config: MODEL.DEMO.ATM (MODEL.ATM) yes needs MODEL.DEMO.HDM (MODEL.HDM) yes: ATM mixes "
                             "HDM's decoupled features (the official code fails there too)")
        if return_pattern not in RETURN_PATTERNS:
            raise ValueError(f"config: MODEL.DEMO.RETURN_PATTERN must be one of {list(RETURN_PATTERNS)}, "
                             f"got {return_pattern!r}")
        D = backbone.out_dim
        self.pife = PatchIntegration(D, self.modalities) if global_local else None
        self.hdm = HierarchicalDecoupling(D, self.modalities, hdm_heads or max(1, D // 64), hdm_dropout) if hdm else None
        E = self.hdm.num_branches if hdm else 0
        self.atm = AttentionTriggeredMixture(D, E, moe_heads) if atm else None
        if hdm:
            self.bottleneck_moe = bn_neck(E * D)
            self.classifier_moe = classifier(E * D, num_classes)
        self.return_pattern = return_pattern
        self.feat_norm = feat_norm

    @property
    def feat_dim(self):
        """Width of the evaluation feature."""
        D, M = self.backbone.out_dim, len(self.modalities)
        if self.hdm is None:
            return M * D
        moe = self.hdm.num_branches * D
        return {1: M * D, 2: moe, 3: M * D + moe}[self.return_pattern]

    def fuse(self, glob, patches):
        """The moe feature [B, E * D]: ATM over HDM's features, or HDM's features concatenated."""
        parts = self.hdm(glob, patches)
        return self.atm(parts) if self.atm is not None else parts.flatten(1)

    def forward(self, images, cam_label=None):
        cls, patches = self.encode(images, cam_label)
        glob = self.pife(cls, patches) if self.pife is not None else cls
        if not self.training:
            feats = []
            if self.hdm is None or self.return_pattern != 2:
                feats.append(glob.flatten(1))
            if self.hdm is not None and self.return_pattern != 1:
                feats.append(self.fuse(glob, patches))
            feat = torch.cat(feats, 1)
            return F.normalize(feat, dim=1) if self.feat_norm else feat
        heads = {}
        if self.hdm is not None:
            moe = self.fuse(glob, patches)
            heads["moe"] = {"score": self.classifier_moe(self.bottleneck_moe(moe)), "feat": moe}
        heads.update(self.class_token_heads(glob))
        return {"heads": heads}
