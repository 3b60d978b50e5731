"""DeMo's three modules (Wang, Liu, Zheng, Zhang, "DeMo: Decoupled Feature-Based Mixture of Experts for
Multi-Modal Object Re-Identification", AAAI 2025):

* ``PatchIntegration`` (PIFE, MODEL.DEMO.GLOBAL_LOCAL): each modality's class token and mean patch token,
  fused into one global feature;
* ``HierarchicalDecoupling`` (HDM, MODEL.DEMO.HDM): one learned query per non-empty subset of the modalities
  (R, N, T, RN, RT, NT, RNT) attends over the tokens of that subset: modality-specific and shared features;
* ``AttentionTriggeredMixture`` (ATM, MODEL.DEMO.ATM): the decoupled features are split into MODEL.DEMO.HEAD
  chunks; per chunk a small expert per feature, weighted by gates from a one-query attention over them.

All three take and return batch-first tensors: ``cls`` / global features [B, M, D], patch tokens
[B, M, N, D] (M modalities, in the model's order), decoupled features [B, E, D] (E = 2^M - 1 subsets).
"""
from itertools import combinations

import torch
import torch.nn as nn

from utils.modalities import modality_code

from ...backbone import QuickGELU


def modality_subsets(modalities):
    """HDM's branches: (name, indices) of every non-empty subset of ``modalities``, smallest first and in
    batch order within a size, named by the modalities' letters (r, n, t, rn, rt, nt, rnt for RGB / NI / TI)."""
    out = []
    for size in range(1, len(modalities) + 1):
        for subset in combinations(range(len(modalities)), size):
            out.append(("".join(modality_code(modalities[i]) for i in subset), subset))
    return out


class PatchIntegration(nn.Module):
    """PIFE: per modality, LayerNorm(2D) -> Linear(2D, D) -> QuickGELU on [class token ; mean patch token].

    Args:
        dim: token width D.
        modalities: the modality names, in batch order (one reducer each, ``reduce[<modality>]``).
    """

    def __init__(self, dim: int, modalities):
        super().__init__()
        self.modalities = tuple(modalities)
        self.reduce = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim), QuickGELU())
                                     for m in self.modalities})

    def forward(self, cls, patches):
        """cls [B, M, D], patches [B, M, N, D] -> global features [B, M, D]."""
        x = torch.cat([cls, patches.mean(2)], -1)
        return torch.stack([self.reduce[m](x[:, i]) for i, m in enumerate(self.modalities)], 1)


class HierarchicalDecoupling(nn.Module):
    """HDM: for every non-empty subset S of the modalities, a learned query token attends (multi-head
    cross-attention, one query) over the concatenation, in batch order, of ``[global_m ; patches_m]`` for m in S.

    The attention is ``nn.MultiheadAttention`` with dropout on its attention weights (active in training, as in
    the official code) and called on its attention-weights path, the official call, so a training forward draws
    the official dropout masks from the torch RNG in the official order (r, n, t, rn, rt, nt, rnt).

    Args:
        dim: token width D.
        modalities: the modality names, in batch order.
        num_heads: attention heads (the official D // 64).
        dropout: dropout probability of the attention weights.
    """

    def __init__(self, dim: int, modalities, num_heads: int, dropout: float = 0.1):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"config: MODEL.DEMO.HDM_HEADS: {num_heads} attention heads (0: token width // 64) "
                             f"do not divide the token width {dim}; set MODEL.DEMO.HDM_HEADS to a divisor of it")
        self.branches = modality_subsets(tuple(modalities))
        self.queries = nn.ParameterDict({name: nn.Parameter(dim ** -0.5 * torch.randn(1, 1, dim))
                                         for name, _ in self.branches})
        self.attn = nn.ModuleDict({name: nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
                                   for name, _ in self.branches})

    @property
    def num_branches(self):
        return len(self.branches)

    def forward(self, glob, patches):
        """glob [B, M, D], patches [B, M, N, D] -> decoupled features [B, E, D], in ``branches`` order."""
        B = glob.shape[0]
        tokens = torch.cat([glob.unsqueeze(2), patches], 2)  # [B, M, 1 + N, D]
        out = []
        for name, subset in self.branches:
            kv = tokens[:, list(subset)].flatten(1, 2)
            query = self.queries[name].expand(B, -1, -1)
            out.append(self.attn[name](query, kv, kv, need_weights=True)[0][:, 0])
        return torch.stack(out, 1)


class AttentionTriggeredMixture(nn.Module):
    """ATM (the official MoM): a mixture of experts over the E decoupled features, in ``heads`` chunks.

    Gates: query = BN(QuickGELU(Linear(concat of the E features -> D))), projected by ``router_q``; keys =
    ``router_k`` of each feature (both without bias); per chunk (head) h a softmax over the E features of the
    scaled dot product of the chunks (scale (D / heads)^-0.5). Experts: chunk h of feature e goes through its
    own Linear(D / heads) -> QuickGELU -> BatchNorm1d and is multiplied by gate (h, e). The H x E experts are
    held stacked (``expert_weight`` [E, H, d, d], ``expert_bias`` [E, H, d], one BatchNorm over the E * H * d
    channels: the same per-channel statistics as one BatchNorm per expert) and applied in one einsum.
    Output: [B, E * D], laid out [feature e][chunk h][d].

    Args:
        dim: token width D (divisible by ``heads``).
        num_experts: E, the number of decoupled features.
        heads: the number of chunks (MODEL.DEMO.HEAD).
    """

    def __init__(self, dim: int, num_experts: int, heads: int):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"config: MODEL.DEMO.HEAD (MODEL.HEAD) must divide the token width {dim} of the "
                             f"backbone (ATM splits each feature into HEAD chunks), got {heads}")
        d = dim // heads
        self.heads, self.num_experts = heads, num_experts
        self.router = nn.Sequential(nn.Linear(num_experts * dim, dim), QuickGELU(), nn.BatchNorm1d(dim))
        self.router_q = nn.Linear(dim, dim, bias=False)
        self.router_k = nn.Linear(dim, dim, bias=False)
        # each expert initialised as an nn.Linear(d, d): uniform(+-1/sqrt(d)) for weight and bias
        bound = d ** -0.5
        self.expert_weight = nn.Parameter(torch.empty(num_experts, heads, d, d).uniform_(-bound, bound))
        self.expert_bias = nn.Parameter(torch.empty(num_experts, heads, d).uniform_(-bound, bound))
        self.expert_act = QuickGELU()
        self.expert_norm = nn.BatchNorm1d(num_experts * dim)

    def gates(self, x):
        """x [B, E, D] -> gates [B, H, E] (softmax over the E features, per chunk)."""
        B, E, D = x.shape
        H, d = self.heads, D // self.heads
        q = self.router_q(self.router(x.flatten(1))).view(B, H, d)
        k = self.router_k(x).view(B, E, H, d)
        return (torch.einsum("bhj,behj->bhe", q, k) * d ** -0.5).softmax(-1)

    def forward(self, x):
        """x [B, E, D] -> [B, E * D]."""
        B, E, D = x.shape
        H, d = self.heads, D // self.heads
        y = torch.einsum("behi,ehoi->beho", x.reshape(B, E, H, d), self.expert_weight) + self.expert_bias
        y = self.expert_norm(self.expert_act(y).flatten(1)).view(B, E, H, d)
        return (y * self.gates(x).transpose(1, 2).unsqueeze(-1)).flatten(1)
