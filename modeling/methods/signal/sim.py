"""Selective Interaction Module (SIM) of Signal (AAAI 2026).

Intra-modal selection keeps, per modality, the top-k patches by the softmax of class-token / patch
similarity. Inter-modal selection projects the three class tokens (queries) and all 3N patches (keys),
takes a softmax over the 3N keys, and lets each modality's query keep the top-2k patches of the other two
modalities. A patch is selected when either rule marks it. The class tokens then attend over the
selected patches (8-head cross-attention, residual + LayerNorm, FFN d -> 2d -> d, residual + LayerNorm).
Selection is a batched top-k and scatter.
"""
import math

import torch
import torch.nn as nn


class TokenSelection(nn.Module):
    """Computes the intra- and inter-modal selection masks.

    Args:
        dim: token width.
        topk: k; intra-modal keeps min(k, N) patches, inter-modal min(2k, (M-1)N) per query.
        num_modalities: M.
    """

    def __init__(self, dim: int, topk: int, num_modalities: int = 3):
        super().__init__()
        self.topk = topk
        self.W_q = nn.Linear(dim, dim)
        self.W_k = nn.Linear(dim, dim)
        # The projections only feed a top-k, which passes no gradient: they keep their initial (or loaded)
        # values, exactly as in the official code. Frozen so that optimizers and checks see it.
        self.W_q.requires_grad_(False)
        self.W_k.requires_grad_(False)
        others = [[u for u in range(num_modalities) if u != m] for m in range(num_modalities)]
        self.register_buffer("others", torch.tensor(others, dtype=torch.long), persistent=False)

    def forward(self, patches, cls):
        """patches [B, M, N, D], cls [B, M, D] -> (intra mask, inter mask), each bool [B, M, N]."""
        B, M, N, D = patches.shape
        scale = 1.0 / math.sqrt(D)
        intra_scores = torch.softmax((patches @ cls.unsqueeze(-1)).squeeze(-1) * scale, dim=-1)
        idx = intra_scores.topk(min(self.topk, N), dim=-1).indices
        intra = torch.zeros(B, M, N, dtype=torch.bool, device=patches.device).scatter_(-1, idx, True)

        q = self.W_q(cls)                                    # [B, M, D]
        k = self.W_k(patches.reshape(B, M * N, D))           # [B, MN, D]
        scores = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1).view(B, M, M, N)
        others = self.others.view(1, M, M - 1, 1).expand(B, M, M - 1, N)
        cross = scores.gather(2, others).reshape(B, M, (M - 1) * N)
        j = cross.topk(min(2 * self.topk, (M - 1) * N), dim=-1).indices   # [B, M, k2]
        target = self.others.expand(B, M, M - 1).gather(2, torch.div(j, N, rounding_mode="floor"))
        flat = (target * N + j % N).reshape(B, -1)
        inter = torch.zeros(B, M * N, dtype=torch.bool, device=patches.device).scatter_(1, flat, True)
        return intra, inter.view(B, M, N)


class ModalInteraction(nn.Module):
    """Class tokens attend over the selected patches; returns the M outputs concatenated [B, M*D]."""

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, queries, keys, key_padding_mask=None):
        attn = self.cross_attn(queries, keys, keys, key_padding_mask=key_padding_mask, need_weights=False)[0]
        x = self.norm1(queries + attn)
        x = self.norm2(x + self.ffn(x))
        return x.flatten(1)


class SelectiveInteraction(nn.Module):
    """SIM: token selection followed by modal interaction.

    Args:
        dim: token width D.
        topk: k of the selection.
        num_heads: heads of the cross-attention.
        mask_unselected: False (official code) multiplies unselected patches by zero but keeps them in
            the key/value sequence; True removes them from attention with a key padding mask.
        num_modalities: M (at least 2: the inter-modal rule needs another modality).
    """

    def __init__(self, dim: int, topk: int, num_heads: int = 8, mask_unselected: bool = False,
                 num_modalities: int = 3):
        super().__init__()
        self.selection = TokenSelection(dim, topk, num_modalities)
        self.interaction = ModalInteraction(dim, num_heads)
        self.mask_unselected = mask_unselected
        self.feat_dim = num_modalities * dim  # the branch feature: the class tokens after interaction

    def branch_outputs(self, cls, patches):
        """Signal's branch contract (modeling/methods/signal/branches): the fused feature, for a head and the eval feature."""
        return {"feature": self(patches, cls)}

    def select(self, patches, cls):
        """Union of the intra- and inter-modal masks, bool [B, M, N]."""
        intra, inter = self.selection(patches, cls)
        return intra | inter

    def forward(self, patches, cls):
        """patches [B, M, N, D], cls [B, M, D] -> fused feature [B, M*D]."""
        B, M, N, D = patches.shape
        keep = self.select(patches, cls)
        if self.mask_unselected:
            keys, pad = patches.reshape(B, M * N, D), ~keep.reshape(B, M * N)
        else:
            keys, pad = (patches * keep.unsqueeze(-1).to(patches.dtype)).reshape(B, M * N, D), None
        return self.interaction(cls, keys, key_padding_mask=pad)
