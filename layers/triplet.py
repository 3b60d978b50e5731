"""Batch-hard triplet loss (Hermans et al., 2017) on Euclidean distances of un-normalised features."""
import torch.nn as nn
import torch.nn.functional as F


def euclidean_dist(x, y):
    xx = (x * x).sum(1, keepdim=True)
    yy = (y * y).sum(1, keepdim=True).T
    return (xx + yy - 2.0 * x @ y.T).clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Hardest positive and hardest negative per anchor.

    Args:
        margin: margin of the ranking loss; ``None`` uses the soft margin ``log(1 + exp(d_ap - d_an))``.
    """

    def __init__(self, margin=None):
        super().__init__()
        self.margin = margin

    def forward(self, feat, target):
        dist = euclidean_dist(feat.float(), feat.float())
        same = target[:, None] == target[None, :]
        d_ap = dist.masked_fill(~same, float("-inf")).max(1).values
        d_an = dist.masked_fill(same, float("inf")).min(1).values
        if self.margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()
