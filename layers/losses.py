"""The objective every method of this field shares: per head an ID and a triplet term, plus the method's own
named terms, each weighted."""
import torch.nn as nn
import torch.nn.functional as F

from .triplet import TripletLoss


class ReIDLoss(nn.Module):
    """Turns a model's training outputs into a dict of named, already-weighted loss terms.

    For each head ``h`` (``outputs['heads'][h] = {'score', 'feat'}``): ``id_<h>`` = id_weight x
    label-smoothed cross-entropy of the logits after BN, ``tri_<h>`` = triplet_weight x batch-hard
    triplet loss on the features before BN. Every other output is a loss term of the method (Signal's
    ``gam``, ``lam``), multiplied by its weight in ``term_weights``; a term without a weight is an error.
    ``official_precision`` and ``gather``: see ``TripletLoss``.
    """

    def __init__(self, id_weight=0.25, triplet_weight=1.0, label_smoothing=0.1, margin=None,
                 official_precision=False, gather=False, term_weights=None):
        super().__init__()
        self.id_weight, self.triplet_weight = id_weight, triplet_weight
        self.label_smoothing = label_smoothing
        self.triplet = TripletLoss(margin, official_precision, gather)
        self.term_weights = dict(term_weights or {})

    def forward(self, outputs, target):
        losses = {}
        for name, head in outputs["heads"].items():
            losses[f"id_{name}"] = self.id_weight * F.cross_entropy(
                head["score"].float(), target, label_smoothing=self.label_smoothing)
            losses[f"tri_{name}"] = self.triplet_weight * self.triplet(head["feat"], target)
        for name, term in outputs.items():
            if name != "heads":
                if name not in self.term_weights:
                    raise KeyError(f"the model returns the loss term {name!r} but no weight is given for it "
                                   f"(the method's loss; for Signal a branch's BranchSpec.loss_weight)")
                losses[name] = self.term_weights[name] * term
        return losses


def reid_loss(cfg, term_weights=None):
    """The shared objective with the config's weights (MODEL.ID_LOSS_WEIGHT, TRIPLET_LOSS_WEIGHT,
    LABEL_SMOOTH, NO_MARGIN / SOLVER.MARGIN) and the method's ``term_weights``."""
    m = cfg.MODEL
    return ReIDLoss(id_weight=m.ID_LOSS_WEIGHT, triplet_weight=m.TRIPLET_LOSS_WEIGHT,
                    label_smoothing=m.LABEL_SMOOTH, margin=None if m.NO_MARGIN else cfg.SOLVER.MARGIN,
                    official_precision=not cfg.SOLVER.AMP_FP32_LOSSES, gather=cfg.SOLVER.GATHER_EMBEDDINGS,
                    term_weights=term_weights)
