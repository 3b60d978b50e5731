"""Gram-determinant volume used by the Global Alignment Module."""


def gram_volume(a, b, c, eps=1e-12):
    """Volumes of the parallelotopes spanned by ``(a_i, b_j, c_j)`` for every pair ``(i, j)``.

    ``V[i, j] = sqrt(|det G|)`` with ``G`` the 3x3 Gram matrix of ``a_i``, ``b_j`` and ``c_j``; 0 when
    the three vectors are linearly dependent (aligned). Computed in float32 with the closed-form 3x3
    determinant; ``eps`` keeps the square root differentiable at 0.

    Args:
        a: [B1, D]; b, c: [B2, D].
    Returns:
        [B1, B2] volumes.
    """
    a, b, c = a.float(), b.float(), c.float()
    aa = (a * a).sum(-1)[:, None]
    bb, cc, bc = (b * b).sum(-1)[None], (c * c).sum(-1)[None], (b * c).sum(-1)[None]
    ab, ac = a @ b.T, a @ c.T
    det = aa * (bb * cc - bc * bc) - ab * (ab * cc - bc * ac) + ac * (ab * bc - bb * ac)
    return det.abs().clamp_min(eps).sqrt()
