"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), batched in torch: same result as the published algorithm, on CPU or GPU.

The per-sample Python loops of the published code become tensor operations: k-reciprocal sets from a
top-k of the distance matrix, the encoding V and its query expansion as sparse matrices, and the Jaccard
term as a join of the queries' non-zero entries with the gallery entries of the same column.
"""
import warnings

import torch


def _k_reciprocal_mask(rank, k):
    """mask[i, c]: rank[i, c] (c < k+1) is a k-reciprocal neighbour of i, [N, k+1] bool."""
    fwd = rank[:, : k + 1]
    bwd = rank[fwd, : k + 1]                                 # [N, k+1, k+1]
    me = torch.arange(rank.shape[0], device=rank.device).view(-1, 1, 1)
    return (bwd == me).any(-1)


def _stable_topk(dist, k):
    """Indices of the k smallest entries per row, ordered by (distance, index) as a stable argsort."""
    idx = torch.topk(dist, k, dim=1, largest=False).indices.sort(dim=1).values
    return idx.gather(1, torch.argsort(dist.gather(1, idx), dim=1, stable=True))


def _encoding(dist, rank, k1):
    """The row-normalised k-reciprocal encoding V as a coalesced sparse COO matrix [N, N]."""
    N, device = dist.shape[0], dist.device
    half = int(round(k1 / 2))
    fwd = rank[:, : k1 + 1]
    recip = _k_reciprocal_mask(rank, k1)                     # [N, k1+1]
    recip_h = _k_reciprocal_mask(rank, half)                 # [N, half+1]
    KR = torch.zeros(N, N, dtype=torch.bool, device=device)
    KR.scatter_(1, fwd, recip)
    # A k-reciprocal neighbour j of i adds its half-size k-reciprocal set R(j) when more than 2/3 of
    # R(j) lies in i's k-reciprocal set.
    cand = rank[:, : half + 1][fwd]                          # [N, k1+1, half+1]
    cand_ok = recip_h[fwd]
    inside = KR.gather(1, cand.reshape(N, -1)).view_as(cand) & cand_ok
    accept = (inside.sum(-1).float() > (2.0 / 3.0) * cand_ok.sum(-1).float()) & recip
    expand = cand_ok & accept.unsqueeze(-1)
    rows = torch.cat([torch.arange(N, device=device).view(N, 1).expand_as(fwd)[recip],
                      torch.arange(N, device=device).view(N, 1, 1).expand_as(cand)[expand]])
    cols = torch.cat([fwd[recip], cand[expand]])
    key = torch.unique(rows * N + cols)
    rows, cols = key // N, key % N
    w = torch.exp(-dist[rows, cols])
    w = w / torch.zeros(N, device=device, dtype=w.dtype).index_add_(0, rows, w)[rows]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), w, (N, N), check_invariants=False).coalesce()


def _query_expansion(V, rank, k2):
    """V_qe[i] = mean of V over i's k2 nearest neighbours (sparse S @ V)."""
    N, device = V.shape[0], V.device
    rows = torch.arange(N, device=device).repeat_interleave(k2)
    S = torch.sparse_coo_tensor(torch.stack([rows, rank[:, :k2].reshape(-1)]),
                                torch.full((N * k2,), 1.0 / k2, device=device, dtype=V.dtype), (N, N),
                                check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(S.coalesce(), V).coalesce()


def _jaccard(V, nq, max_pairs=16_000_000):
    """1 - sum_j min(V[q, j], V[g, j]) / sum_j max(...) for queries q < nq and gallery g >= nq, [nq, Ng]."""
    N, device = V.shape[0], V.device
    ng = N - nq
    (r, c), v = V.indices(), V.values()
    is_q = r < nq
    qr, qc, qv = r[is_q], c[is_q], v[is_q]                   # query entries, sorted by row
    gmask = ~is_q
    order = torch.argsort(c[gmask], stable=True)             # gallery entries grouped by column
    gr, gc, gv = r[gmask][order] - nq, c[gmask][order], v[gmask][order]
    counts = torch.bincount(gc, minlength=N)
    start = torch.cumsum(counts, 0) - counts
    per_entry = counts[qc]
    tmin = torch.zeros(nq * ng, device=device, dtype=v.dtype)
    bounds = torch.cumsum(per_entry, 0)
    s = 0
    while s < len(qc):
        # As many query entries as fit in max_pairs joined pairs.
        base = bounds[s - 1] if s > 0 else bounds.new_zeros(())
        e = int(torch.searchsorted(bounds, base + max_pairs, right=True).item())
        e = max(e, s + 1)
        n = per_entry[s:e]
        total = int(n.sum().item())
        if total:
            first = torch.cumsum(n, 0) - n
            idx = torch.repeat_interleave(start[qc[s:e]] - first, n) + torch.arange(total, device=device)
            q = torch.repeat_interleave(qr[s:e], n)
            vals = torch.minimum(torch.repeat_interleave(qv[s:e], n), gv[idx])
            tmin.index_add_(0, q * ng + gr[idx], vals)
        s = e
    tmin = tmin.view(nq, ng)
    return 1 - tmin / (2 - tmin)


@torch.no_grad()
def re_ranking(q_feat, g_feat, k1=20, k2=6, lambda_value=0.3, device=None):
    """Re-ranked distances [num_query, num_gallery] as a numpy array (float32).

    ``device`` defaults to CUDA when available, else the features' device.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else torch.as_tensor(q_feat).device
    q = torch.as_tensor(q_feat).float().to(device)
    g = torch.as_tensor(g_feat).float().to(device)
    nq = q.shape[0]
    feat = torch.cat([q, g])
    N = feat.shape[0]
    sq = (feat * feat).sum(1)
    dist = torch.addmm(sq[:, None] + sq[None], feat, feat.T, alpha=-2.0).clamp_min_(0)
    dist /= dist.max(1, keepdim=True).values
    k1 = min(k1, N - 1)
    rank = _stable_topk(dist, min(max(k1 + 1, k2), N))
    V = _encoding(dist, rank, k1)
    if k2 != 1:
        V = _query_expansion(V, rank, k2)
    final = _jaccard(V, nq).mul_(1 - lambda_value).add_(dist[:nq, nq:], alpha=lambda_value)
    return final.cpu().numpy()
