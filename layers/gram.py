"""Gram-determinant volume used by the Global Alignment Module."""
import contextlib

import torch

from .precision import fp32


def _gram_entry(vectors, p, q, n1, n2):
    """Entry (p, q) of the Gram matrices of ``(a_i, b_j, ...)`` for every pair (i, j), as [n1, n2]: ``a``
    (vector 0) is indexed by i, the others by j."""
    x, y = vectors[p], vectors[q]
    if p == q == 0:
        return torch.einsum("bi,bi->b", x, x)[:, None].expand(-1, n2)
    if p == 0 or q == 0:
        return (x @ y.T) if p == 0 else (y @ x.T)
    return torch.einsum("bi,bi->b", x, y)[None].expand(n1, -1)


def gram_volume(a, *others, eps=1e-12, official_precision=False):
    """Volumes of the parallelotopes spanned by ``(a_i, b_j, c_j, ...)`` for every pair ``(i, j)`` (Signal's
    three modalities: ``gram_volume(a, b, c)``; two: the parallelogram of ``a_i`` and ``b_j``).

    ``V[i, j] = sqrt(|det G|)`` with ``G`` the Gram matrix of ``a_i``, ``b_j``, ``c_j``, ...; 0 when the
    vectors are linearly dependent (aligned). ``eps`` keeps the square root differentiable at 0.

    By default everything runs in fp32 outside autocast (closed-form 2x2 / 3x3 determinants): under fp16
    autocast the Gram entries of nearly aligned vectors lose the digits the determinant keeps, and the
    volume's gradient (growing like 1 / sqrt(det)) overflows fp16 in the backward. ``official_precision=True``
    computes the Gram entries as the official code does (einsum / matmul under the surrounding autocast,
    fp16 on CUDA) and the determinant in fp32 with ``torch.det``.

    Args:
        a: [B1, D]; each of ``others``: [B2, D] (at least one).
    Returns:
        [B1, B2] fp32 volumes.
    """
    if not others:
        raise ValueError("gram_volume needs at least two sets of vectors")
    vectors = (a,) + others
    k, n1, n2 = len(vectors), a.shape[0], others[0].shape[0]
    if official_precision or k > 3:
        with contextlib.nullcontext() if official_precision else fp32(a.device):
            if not official_precision:
                vectors = tuple(v.float() for v in vectors)
            gram = torch.stack([torch.stack([_gram_entry(vectors, p, q, n1, n2) for q in range(k)], -1)
                                for p in range(k)], -2)
            return torch.det(gram.float()).abs().clamp_min(eps).sqrt()
    with fp32(a.device):
        a, b = a.float(), others[0].float()
        aa, bb, ab = (a * a).sum(-1)[:, None], (b * b).sum(-1)[None], a @ b.T
        if k == 2:
            det = aa * bb - ab * ab
        else:
            c = others[1].float()
            cc, bc, ac = (c * c).sum(-1)[None], (b * c).sum(-1)[None], a @ c.T
            det = aa * (bb * cc - bc * bc) - ab * (ab * cc - bc * ac) + ac * (ab * bc - bb * ac)
        return det.abs().clamp_min(eps).sqrt()
