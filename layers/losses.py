"""The training objective: per head ID + triplet terms, plus the GAM and LAM terms."""
import torch.nn as nn
import torch.nn.functional as F

from .triplet import TripletLoss


class SignalLoss(nn.Module):
    """Turns the model's training outputs into a dict of named, already-weighted loss terms.

    For each head ``h`` (``outputs['heads'][h] = {'score', 'feat'}``): ``id_<h>`` = id_weight x
    label-smoothed cross-entropy of the logits after BN, ``tri_<h>`` = triplet_weight x batch-hard
    triplet loss on the features before BN. ``gam`` = gam_weight x GAM loss, ``lam`` = lam_weight x LAM
    loss when the model returns them. ``official_precision`` and ``gather``: see ``TripletLoss``.
    """

    def __init__(self, id_weight=0.25, triplet_weight=1.0, label_smoothing=0.1, margin=None,
                 gam_weight=0.2, lam_weight=0.2, official_precision=False, gather=False):
        super().__init__()
        self.id_weight, self.triplet_weight = id_weight, triplet_weight
        self.label_smoothing = label_smoothing
        self.triplet = TripletLoss(margin, official_precision, gather)
        self.gam_weight, self.lam_weight = gam_weight, lam_weight

    def forward(self, outputs, target):
        losses = {}
        for name, head in outputs["heads"].items():
            losses[f"id_{name}"] = self.id_weight * F.cross_entropy(
                head["score"].float(), target, label_smoothing=self.label_smoothing)
            losses[f"tri_{name}"] = self.triplet_weight * self.triplet(head["feat"], target)
        if "gam" in outputs:
            losses["gam"] = self.gam_weight * outputs["gam"]
        if "lam" in outputs:
            losses["lam"] = self.lam_weight * outputs["lam"]
        return losses


def build_loss(cfg):
    m = cfg.MODEL
    return SignalLoss(id_weight=m.ID_LOSS_WEIGHT, triplet_weight=m.TRIPLET_LOSS_WEIGHT,
                      label_smoothing=m.LABEL_SMOOTH, margin=None if m.NO_MARGIN else cfg.SOLVER.MARGIN,
                      gam_weight=m.GAM_WEIGHT, lam_weight=m.LAM_WEIGHT,
                      official_precision=not cfg.SOLVER.AMP_FP32_LOSSES, gather=cfg.SOLVER.GATHER_EMBEDDINGS)
