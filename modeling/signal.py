"""Signal: Selective Interaction and Global-local Alignment for multi-modal object ReID (AAAI 2026).

The three modalities go through one shared ViT (stacked into one batch). Heads: the concatenated class
tokens (``direct=True``) or one head per modality, plus one per branch with a feature (SIM). Training
returns a dict of named outputs (``heads`` and each branch's loss term: ``gam``, ``lam``); evaluation returns
the test feature ``concat[c_R, c_N, c_T, branch features (SIM)]`` before BN.
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
        backbone: an ``Encoder`` shared by the modalities (modeling/backbone.py).
        num_classes: training identities.
        direct: one head on the concatenated class tokens (True) or one head per modality (False).
        branches: {name: branch module, or None when switched off}, in order (modeling/branches): each
            becomes the attribute ``name``; one with a feature gets a head (``bottleneck_<name>``,
            ``classifier_<name>``) and adds its eval feature after the class tokens.
        feat_norm: L2-normalise the evaluation feature.
    """

    def __init__(self, backbone, num_classes: int, direct: bool = True, branches=None, feat_norm: bool = True):
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
        self.branch_names = tuple((branches or {}).keys())
        for name, module in (branches or {}).items():
            setattr(self, name, module)
            if module is not None and module.feat_dim:
                setattr(self, f"bottleneck_{name}", bn_neck(module.feat_dim))
                setattr(self, f"classifier_{name}", classifier(module.feat_dim, num_classes))
        self.feat_norm = feat_norm

    def branches(self):
        """(name, module) of the enabled branches, in order."""
        return [(n, getattr(self, n)) for n in self.branch_names if getattr(self, n) is not None]

    @property
    def feat_dim(self):
        """Width of the evaluation feature."""
        return 3 * self.backbone.out_dim + sum(m.feat_dim for _, m in self.branches())

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
        # loss-only branches are not run at evaluation
        outs = {name: m.branch_outputs(cls, patches) for name, m in self.branches() if self.training or m.feat_dim}
        if not self.training:
            feat = torch.cat([cls.flatten(1)] + [o.get("eval", o["feature"]) for o in outs.values() if "feature" in o], 1)
            return F.normalize(feat, dim=1) if self.feat_norm else feat
        heads = {}
        if self.direct:
            g = cls.flatten(1)
            heads["global"] = {"score": self.classifier(self.bottleneck(g)), "feat": g}
        else:
            for i, m in enumerate(MODALITIES):
                heads[m] = {"score": self.classifiers[m](self.bottlenecks[m](cls[:, i])), "feat": cls[:, i]}
        for name, o in outs.items():
            if "feature" in o:
                score = getattr(self, f"classifier_{name}")(getattr(self, f"bottleneck_{name}")(o["feature"]))
                heads[name] = {"score": score, "feat": o["feature"]}
        out = {"heads": heads}
        out.update({name: o["loss"] for name, o in outs.items() if "loss" in o})
        return out
