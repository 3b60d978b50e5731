"""MDReID's objective: the shared ID + triplet terms per head (the shared head's weighted x3 by default), the
orthogonality loss (ADD_CLOSS) and the modality-aware ratio triplet loss (ADD_ELOSS)."""
import contextlib

import torch
import torch.nn as nn

from layers import ReIDLoss
from layers.mdreid_losses import orthogonality_loss, ratio_loss
from layers.precision import fp32
from utils import comm


class MDReIDLoss(nn.Module):
    """{name: weighted term} of MDReID's training outputs.

    Args:
        reid: the shared per-head ID + triplet loss (``layers.ReIDLoss``).
        shared_head_weight: factor on the ``shared`` head's two terms.
        orth_weight: weight of ``orth`` (0: not computed).
        ratio_weight: weight of ``ratio`` (0: not computed).
        official_precision: compute ``orth`` and ``ratio`` under the surrounding autocast (fp16 on CUDA, as
            the official code) instead of in fp32.
        gather: under torch.distributed, mine the ratio loss's hardest pairs over every rank's features.
    """

    def __init__(self, reid: ReIDLoss, shared_head_weight=3.0, orth_weight=1.5, ratio_weight=5.25,
                 official_precision=False, gather=False):
        super().__init__()
        self.reid = reid
        self.shared_head_weight, self.orth_weight, self.ratio_weight = shared_head_weight, orth_weight, ratio_weight
        self.official_precision, self.gather = official_precision, gather

    def forward(self, outputs, target):
        losses = self.reid({"heads": outputs["heads"]}, target)
        if "shared" in outputs["heads"]:
            for k in ("id_shared", "tri_shared"):
                losses[k] = self.shared_head_weight * losses[k]
        if not (self.orth_weight or self.ratio_weight):
            return losses
        if "shared" not in outputs:
            raise KeyError("MDReID's orthogonality and ratio losses need the shared tokens (MODEL.MDREID.ADD_SHARE)")
        g, s = outputs["specific"], outputs["shared"]
        with contextlib.nullcontext() if self.official_precision else fp32(g.device):
            if not self.official_precision:
                g, s = g.float(), s.float()
            if self.orth_weight:
                losses["orth"] = self.orth_weight * orthogonality_loss(g, s)
            if self.ratio_weight:
                joint = torch.cat([g, s], -1).flatten(1)  # [g_1 ; s_1 ; g_2 ; s_2 ; ...]
                specific, shared, labels = g.flatten(1), s.flatten(1), target
                if self.gather:
                    joint, specific, shared, labels = (comm.gather_for_loss(t)
                                                       for t in (joint, specific, shared, labels))
                losses["ratio"] = self.ratio_weight * ratio_loss(joint, specific, shared, labels)
        return losses
