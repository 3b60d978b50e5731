"""Batch-hard triplet loss (Hermans et al., 2017) on Euclidean distances of un-normalised features."""
import torch.nn as nn
import torch.nn.functional as F

from utils import comm

from .precision import fp32


def euclidean_dist(x, y):
    """[M, N] distances. Squares in fp32; the ``x @ y.T`` term runs at the surrounding autocast's precision
    (``TripletLoss`` calls it outside autocast unless asked for the official precision)."""
    x, y = x.float(), y.float()
    xx = (x * x).sum(1, keepdim=True)
    yy = (y * y).sum(1, keepdim=True).T
    return (xx + yy - 2.0 * x @ y.T).clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Hardest positive and hardest negative per anchor.

    Args:
        margin: margin of the ranking loss; ``None`` uses the soft margin ``log(1 + exp(d_ap - d_an))``.
        official_precision: compute the distances' matmul under the surrounding autocast (fp16 on CUDA, as
            the official code) instead of in fp32, where features of norm above ~180 overflow fp16.
        gather: under torch.distributed, mine over the features of every rank (the global batch, as on one
            process) instead of this rank's own.
    """

    def __init__(self, margin=None, official_precision=False, gather=False):
        super().__init__()
        self.margin = margin
        self.official_precision = official_precision
        self.gather = gather

    def forward(self, feat, target):
        if self.gather:
            feat, target = comm.gather_for_loss(feat), comm.gather_for_loss(target)
        if self.official_precision:
            dist = euclidean_dist(feat, feat)
        else:
            with fp32(feat.device):
                dist = euclidean_dist(feat, feat)
        same = target[:, None] == target[None, :]
        d_ap = dist.masked_fill(~same, float("-inf")).max(1).values
        d_an = dist.masked_fill(same, float("inf")).min(1).values
        if self.margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()
