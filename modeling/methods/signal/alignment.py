"""Global (GAM) and Local (LAM) Alignment Modules of Signal (AAAI 2026)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from layers.gram import gram_volume
from utils import comm
from utils.modalities import MODALITIES


class GlobalAlignment(nn.Module):
    """GAM: per modality the L2-normalised mean patch token; the loss makes matched (r_i, n_i, t_i)
    triples (one vector per modality) span the smallest Gram volume in their row and column.

    ``loss = (CE(-V/tau, diag) + CE(-V^T/tau, diag)) / 2`` with label smoothing and a learnable tau.

    Args:
        temperature: initial tau.
        label_smoothing: of both cross-entropies.
        official_precision: the official code's precision under fp16 autocast (mean patch token and Gram
            entries in fp16, determinant in fp32) instead of fp32 throughout (``layers.gram_volume``).
        gather: under torch.distributed, contrast against the triples of every rank (the global batch).
    """

    def __init__(self, temperature: float = 0.07, label_smoothing: float = 0.1, official_precision: bool = False,
                 gather: bool = False):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.label_smoothing = label_smoothing
        self.official_precision = official_precision
        self.gather = gather

    feat_dim = 0  # a loss-only branch

    def branch_outputs(self, cls, patches):
        """Signal's branch contract (modeling/methods/signal/branches): the GAM loss term."""
        return {"loss": self(patches)}

    def forward(self, patches):
        """patches [B, M, N, D] -> scalar loss."""
        f = F.normalize((patches if self.official_precision else patches.float()).mean(2), dim=-1)
        if self.gather:
            f = comm.gather_for_loss(f)
        volume = gram_volume(*f.unbind(1), official_precision=self.official_precision)
        volume = volume / self.temperature
        target = torch.arange(f.shape[0], device=f.device)
        return 0.5 * (F.cross_entropy(-volume, target, label_smoothing=self.label_smoothing)
                      + F.cross_entropy(-volume.T, target, label_smoothing=self.label_smoothing))


class DeformableSampler(nn.Module):
    """Samples a token map at learned offsets from a regular grid of reference points.

    q = 1x1 conv(x); offsets = (1x1 conv, GELU, depthwise k x k conv stride s, GELU, 1x1 conv without
    bias)(q) on an Hk x Wk grid; tanh, scaled by ``offset_range`` x (1/(Hk-1), 1/(Wk-1)), added to the
    reference points and clamped to [-1, 1]; x is sampled bilinearly there (align_corners=True).

    Args:
        dim: channels.
        kernel_size, stride: of the depthwise offset convolution.
        offset_range: scale of the tanh offsets.
        offset_channels: 1 (official code: one offset broadcast to y and x) or 2 (independent y, x).
    """

    def __init__(self, dim: int, kernel_size: int = 4, stride: int = 4, offset_range: float = 2.0,
                 offset_channels: int = 1):
        super().__init__()
        self.proj_q = nn.Conv2d(dim, dim, 1)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size, stride, 0, groups=dim), nn.GELU(),
            nn.Conv2d(dim, offset_channels, 1, bias=False))
        self.offset_range = offset_range

    @staticmethod
    def reference_points(Hk, Wk, device, dtype=torch.float32):
        """Reference (y, x) grid in [-1, 1] coordinates, [Hk, Wk, 2] (the official formula)."""
        def axis(n):
            if n == 1:
                return torch.zeros(1, device=device, dtype=dtype)
            return torch.linspace(0.5, n - 0.5, n, device=device, dtype=dtype) / (n - 1) * 2 - 1
        ys, xs = torch.meshgrid(axis(Hk), axis(Wk), indexing="ij")
        return torch.stack((ys, xs), -1)

    def sampling_points(self, x):
        """(clamped sampling points, reference points), both [B, Hk, Wk, 2] in (y, x) order."""
        offset = self.conv_offset(self.proj_q(x)).float().tanh()
        B, C, Hk, Wk = offset.shape
        # Python scalars per axis, no constant tensor: nothing is copied from the host in the forward.
        dy, dx = offset[:, 0], offset[:, C - 1]          # one channel: the same offset on both axes
        offset = torch.stack((dy * (1.0 / max(Hk - 1, 1)) * self.offset_range,
                              dx * (1.0 / max(Wk - 1, 1)) * self.offset_range), -1)
        ref = self.reference_points(Hk, Wk, x.device).expand(B, -1, -1, -1)
        return (ref + offset).clamp(-1.0, 1.0), ref

    def forward(self, x):
        """x [B, D, H, W] -> sampled [B, D, Hk, Wk]."""
        pos, _ = self.sampling_points(x)
        return F.grid_sample(x.float(), pos.flip(-1), mode="bilinear", align_corners=True).to(x.dtype)


class LocalAlignment(nn.Module):
    """LAM: one deformable sampler per modality; loss = the mean MSE over every pair of modalities (RGB / NI /
    TI: MSE(N, R), MSE(T, R), MSE(T, N), in the official order)."""

    def __init__(self, dim: int, grid, modalities=MODALITIES, kernel_size: int = 4, stride: int = 4,
                 offset_range: float = 2.0, offset_channels: int = 1):
        super().__init__()
        H, W = grid
        if H < kernel_size or W < kernel_size:
            raise ValueError(f"LAM: the patch grid {H}x{W} is smaller than MODEL.LAM_KERNEL={kernel_size}; "
                             f"use larger input images or a smaller kernel")
        self.grid = (H, W)
        self.samplers = nn.ModuleDict({m: DeformableSampler(dim, kernel_size, stride, offset_range, offset_channels)
                                       for m in modalities})

    feat_dim = 0  # a loss-only branch

    def branch_outputs(self, cls, patches):
        """Signal's branch contract (modeling/methods/signal/branches): the LAM loss term."""
        return {"loss": self(patches)}

    def to_maps(self, patches):
        """[B, M, N, D] -> list of M maps [B, D, H, W]."""
        B, M, N, D = patches.shape
        maps = patches.reshape(B, M, *self.grid, D).permute(1, 0, 4, 2, 3)
        return list(maps.unbind(0))

    def forward(self, patches):
        maps = [s(x) for s, x in zip(self.samplers.values(), self.to_maps(patches))]
        pairs = [(j, i) for j in range(len(maps)) for i in range(j)]  # (N, R), (T, R), (T, N) for RGB / NI / TI
        return sum(F.mse_loss(maps[j], maps[i]) for j, i in pairs) / len(pairs)
