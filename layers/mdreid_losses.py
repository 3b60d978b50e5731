"""MDReID's two decoupling losses (Feng et al., "MDReID: Modality-Decoupled Learning for Any-to-Any Multi-Modal
Object Re-Identification", NeurIPS 2025), on the modality-specific features g_m and the modality-shared
features s_m of a batch, without a loop over the batch.

* ``orthogonality_loss``: per sample, the 2M x 2M Gram matrix of the normalised [g_1..g_M, s_1..s_M] with its
  rows normalised again, times its transpose, is pulled towards [[I_M, 0], [0, 1_M]]: the specific features
  apart from each other and from the shared ones, the shared ones together.
* ``ratio_loss``: the modality-aware ratio triplet loss. Batch-hard distances of the joint feature
  [g_m ; s_m] (all modalities) against those of the specific and the shared features alone (held fixed):
  the joint hardest positive should be a small part of the three, its hardest negative a large one.
"""
import torch
import torch.nn.functional as F

from .triplet import euclidean_dist


def decoupling_target(num_modalities, device=None, dtype=None):
    """[[I_M, 0], [0, ones(M, M)]] (2M x 2M): what ``orthogonality_loss`` pulls each sample's matrix to."""
    M = num_modalities
    target = torch.zeros(2 * M, 2 * M, device=device, dtype=dtype)
    target[:M, :M] = torch.eye(M, device=device, dtype=dtype)
    target[M:, M:] = 1.0
    return target


def orthogonality_loss(specific, shared, eps=1e-6):
    """Args:
        specific, shared: [B, M, D] the modality-specific and modality-shared features.
        eps: added to the squared row norms of the Gram matrix before its rows are normalised.

    Returns the batch mean of ``sum((W - T)^2) / (2M)^2`` with X = the 2M rows [specific; shared] L2-normalised,
    G = X X^T, G' its rows divided by sqrt(sum of squares + eps), W = G' G'^T and T = ``decoupling_target(M)``."""
    x = F.normalize(torch.cat([specific, shared], 1), dim=-1)
    gram = x @ x.transpose(1, 2)
    gram = gram / (gram.pow(2).sum(-1, keepdim=True) + eps).sqrt()
    w = gram @ gram.transpose(1, 2)
    K = w.shape[-1]
    target = decoupling_target(specific.shape[1], w.device, w.dtype)
    return (w - target).pow(2).sum((1, 2)).div(K * K).mean()


def hardest_pairs(dist, target):
    """Batch-hard mining: (distance of each anchor's hardest positive, of its hardest negative) [N] each."""
    same = target[:, None] == target[None, :]
    return dist.masked_fill(~same, float("-inf")).max(1).values, dist.masked_fill(same, float("inf")).min(1).values


def ratio_loss(joint, specific, shared, target):
    """Args:
        joint: [B, F] the [g_m ; s_m] features of every modality, concatenated.
        specific, shared: [B, F'] the specific and the shared features alone (no gradient flows through them).
        target: [B] identity labels.

    With (ap, an) the batch-hard positive and negative distances of each feature: s_p = max ap(joint) / (max
    ap(joint) + max ap(specific) + max ap(shared)), s_n = min an(joint) / (min an(joint) + min an(specific) +
    min an(shared)); the loss is |s_p| + |1 - s_n|."""
    ap, an = hardest_pairs(euclidean_dist(joint, joint), target)
    with torch.no_grad():
        ap_p, an_p = hardest_pairs(euclidean_dist(specific, specific), target)
        ap_s, an_s = hardest_pairs(euclidean_dist(shared, shared), target)
    hard_pos, hard_neg = ap.max(), an.min()
    s_p = hard_pos / (hard_pos + ap_p.max() + ap_s.max())
    s_n = hard_neg / (hard_neg + an_p.min() + an_s.min())
    return s_p.abs() + (s_n - 1).abs()
