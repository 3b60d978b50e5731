"""Signal: Selective Interaction and Global-local Alignment for multi-modal object ReID (AAAI 2026).

The modalities go through one shared ViT (stacked into one batch). Heads: the concatenated class tokens
(``direct=True``) or one head per modality, plus one per branch with a feature (SIM). Training returns a
dict of named outputs (``heads`` and each branch's loss term: ``gam``, ``lam``); evaluation returns the test
feature ``concat[c_R, c_N, c_T, branch features (SIM)]`` before BN.
"""
import torch
import torch.nn.functional as F

from utils.modalities import MODALITIES

from ...base import SharedEncoderModel, bn_neck, classifier


class Signal(SharedEncoderModel):
    """Args:
        backbone: an ``Encoder`` shared by the modalities (modeling/backbone.py).
        num_classes: training identities.
        direct: one head on the concatenated class tokens (True) or one head per modality (False).
        branches: {name: branch module, or None when switched off}, in order (``branches``): each becomes
            the attribute ``name``; one with a feature gets a head (``bottleneck_<name>``,
            ``classifier_<name>``) and adds its eval feature after the class tokens.
        feat_norm: L2-normalise the evaluation feature.
        modalities: the modality names of a batch, in order.
    """

    def __init__(self, backbone, num_classes: int, direct: bool = True, branches=None, feat_norm: bool = True,
                 modalities=MODALITIES):
        super().__init__(backbone, num_classes, direct, modalities)
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
        return len(self.modalities) * self.backbone.out_dim + sum(m.feat_dim for _, m in self.branches())

    def forward(self, images, cam_label=None):
        cls, patches = self.encode(images, cam_label)
        # loss-only branches are not run at evaluation
        outs = {name: m.branch_outputs(cls, patches) for name, m in self.branches() if self.training or m.feat_dim}
        if not self.training:
            feat = torch.cat([cls.flatten(1)] + [o.get("eval", o["feature"]) for o in outs.values() if "feature" in o], 1)
            return F.normalize(feat, dim=1) if self.feat_norm else feat
        heads = self.class_token_heads(cls)
        for name, o in outs.items():
            if "feature" in o:
                score = getattr(self, f"classifier_{name}")(getattr(self, f"bottleneck_{name}")(o["feature"]))
                heads[name] = {"score": score, "feat": o["feature"]}
        out = {"heads": heads}
        out.update({name: o["loss"] for name, o in outs.items() if "loss" in o})
        return out
