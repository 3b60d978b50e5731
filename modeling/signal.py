"""Signal: Selective Interaction and Global-local Alignment for multi-modal object ReID (AAAI 2026).

The three modalities go through one shared ViT (stacked into one batch). Heads: the concatenated class
tokens (``direct=True``) or one head per modality, plus the SIM head. Training returns a dict of named
outputs; evaluation returns the test feature ``concat[c_R, c_N, c_T, SIM feature]`` before BN.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.modalities import MODALITIES


def bn_neck(dim):
    """BatchNorm neck with a frozen zero bias and unit weight."""
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def classifier(dim, num_classes):
    fc = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc


class Signal(nn.Module):
    """Args:
        backbone: a ``ViTBackbone`` shared by the modalities.
        num_classes: training identities.
        direct: one head on the concatenated class tokens (True) or one head per modality (False).
        sim, gam, lam: the three modules, or None when disabled.
        feat_norm: L2-normalise the evaluation feature.
    """

    def __init__(self, backbone, num_classes: int, direct: bool = True, sim=None, gam=None, lam=None,
                 feat_norm: bool = True):
        super().__init__()
        self.backbone = backbone
        d = backbone.out_dim
        self.direct = direct
        if direct:
            self.bottleneck = bn_neck(3 * d)
            self.classifier = classifier(3 * d, num_classes)
        else:
            self.bottlenecks = nn.ModuleDict({m: bn_neck(d) for m in MODALITIES})
            self.classifiers = nn.ModuleDict({m: classifier(d, num_classes) for m in MODALITIES})
        self.sim = sim
        if sim is not None:
            self.bottleneck_sim = bn_neck(3 * d)
            self.classifier_sim = classifier(3 * d, num_classes)
        self.gam = gam
        self.lam = lam
        self.feat_norm = feat_norm

    @property
    def feat_dim(self):
        """Width of the evaluation feature."""
        return self.backbone.out_dim * (6 if self.sim is not None else 3)

    def encode(self, images, cam_label=None):
        """Shared backbone on the stacked modalities -> (class tokens [B, 3, D], patches [B, 3, N, D])."""
        x = torch.cat([images[m] for m in MODALITIES], 0)
        B = x.shape[0] // 3
        cams = cam_label.repeat(3) if cam_label is not None else None
        cls, patches = self.backbone(x, cams)
        cls = cls.view(3, B, -1).transpose(0, 1)
        patches = patches.view(3, B, *patches.shape[1:]).transpose(0, 1)
        return cls, patches

    def forward(self, images, cam_label=None):
        cls, patches = self.encode(images, cam_label)
        sim_feat = self.sim(patches, cls) if self.sim is not None else None
        if not self.training:
            feats = [cls.flatten(1)] + ([sim_feat] if sim_feat is not None else [])
            feat = torch.cat(feats, 1)
            return F.normalize(feat, dim=1) if self.feat_norm else feat
        heads = {}
        if self.direct:
            g = cls.flatten(1)
            heads["global"] = {"score": self.classifier(self.bottleneck(g)), "feat": g}
        else:
            for i, m in enumerate(MODALITIES):
                heads[m] = {"score": self.classifiers[m](self.bottlenecks[m](cls[:, i])), "feat": cls[:, i]}
        if sim_feat is not None:
            heads["sim"] = {"score": self.classifier_sim(self.bottleneck_sim(sim_feat)), "feat": sim_feat}
        out = {"heads": heads}
        if self.gam is not None:
            out["gam"] = self.gam(patches)
        if self.lam is not None:
            out["lam"] = self.lam(patches)
        return out
