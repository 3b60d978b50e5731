"""The training objective: per head ID + triplet terms, plus the GAM and LAM terms."""
import torch.nn as nn
import torch.nn.functional as F

from .triplet import TripletLoss


class SignalLoss(nn.Module):
    """Turns the model's training outputs into a dict of named, already-weighted loss terms.

    For each head ``h`` (``outputs['heads'][h] = {'score', 'feat'}``): ``id_<h>`` = id_weight x
    label-smoothed cross-entropy of the logits after BN, ``tri_<h>`` = triplet_weight x batch-hard
    triplet loss on the features before BN. Every other output is a branch's loss term (``gam``, ``lam``),
    multiplied by its weight in ``term_weights``. ``official_precision`` and ``gather``: see ``TripletLoss``.
    """

    def __init__(self, id_weight=0.25, triplet_weight=1.0, label_smoothing=0.1, margin=None,
                 gam_weight=0.2, lam_weight=0.2, official_precision=False, gather=False, term_weights=None):
        super().__init__()
        self.id_weight, self.triplet_weight = id_weight, triplet_weight
        self.label_smoothing = label_smoothing
        self.triplet = TripletLoss(margin, official_precision, gather)
        self.term_weights = {"gam": gam_weight, "lam": lam_weight, **(term_weights or {})}

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
                                   f"(a branch's BranchSpec.loss_weight)")
                losses[name] = self.term_weights[name] * term
        return losses


def build_loss(cfg):
    """The loss of the config; each branch's term is weighted by its spec (modeling/branches)."""
    from modeling.branches import branch_specs
    m = cfg.MODEL
    weights = {s.name: s.loss_weight(cfg) for s in branch_specs() if s.loss_weight is not None}
    return SignalLoss(id_weight=m.ID_LOSS_WEIGHT, triplet_weight=m.TRIPLET_LOSS_WEIGHT,
                      label_smoothing=m.LABEL_SMOOTH, margin=None if m.NO_MARGIN else cfg.SOLVER.MARGIN,
                      official_precision=not cfg.SOLVER.AMP_FP32_LOSSES, gather=cfg.SOLVER.GATHER_EMBEDDINGS,
                      term_weights=weights)
