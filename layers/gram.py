"""Gram-determinant volume used by the Global Alignment Module."""
import torch

from .precision import fp32


def gram_volume(a, b, c, eps=1e-12, official_precision=False):
    """Volumes of the parallelotopes spanned by ``(a_i, b_j, c_j)`` for every pair ``(i, j)``.

    ``V[i, j] = sqrt(|det G|)`` with ``G`` the 3x3 Gram matrix of ``a_i``, ``b_j`` and ``c_j``; 0 when
    the three vectors are linearly dependent (aligned). ``eps`` keeps the square root differentiable at 0.

    By default everything runs in fp32 outside autocast (closed-form 3x3 determinant): under fp16 autocast
    the Gram entries of nearly aligned vectors lose the digits the determinant keeps, and the volume's
    gradient (growing like 1 / sqrt(det)) overflows fp16 in the backward. ``official_precision=True``
    computes the Gram entries as the official code does (einsum / matmul under the surrounding autocast,
    fp16 on CUDA) and the determinant in fp32 with ``torch.det``.

    Args:
        a: [B1, D]; b, c: [B2, D].
    Returns:
        [B1, B2] fp32 volumes.
    """
    if official_precision:
        n1, n2 = a.shape[0], b.shape[0]
        aa = torch.einsum("bi,bi->b", a, a)[:, None].expand(-1, n2)
        ab, ac = a @ b.T, a @ c.T
        bb, bc, cc = (torch.einsum("bi,bi->b", x, y)[None].expand(n1, -1) for x, y in ((b, b), (b, c), (c, c)))
        gram = torch.stack([torch.stack([aa, ab, ac], -1), torch.stack([ab, bb, bc], -1),
                            torch.stack([ac, bc, cc], -1)], -2)
        return torch.det(gram.float()).abs().clamp_min(eps).sqrt()
    with fp32(a.device):
        a, b, c = a.float(), b.float(), c.float()
        aa = (a * a).sum(-1)[:, None]
        bb, cc, bc = (b * b).sum(-1)[None], (c * c).sum(-1)[None], (b * c).sum(-1)[None]
        ab, ac = a @ b.T, a @ c.T
        det = aa * (bb * cc - bc * bc) - ab * (ab * cc - bc * ac) + ac * (ab * bc - bb * ac)
        return det.abs().clamp_min(eps).sqrt()
