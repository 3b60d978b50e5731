"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), batched in torch: same result as the published algorithm, on CPU or GPU.

The per-sample Python loops of the published code become tensor operations: k-reciprocal sets from a
top-k of the distance matrix, the encoding V and its query expansion as sparse matrices, and the Jaccard
term as a join of the queries' non-zero entries with the gallery entries of the same column.

Above a size (``dense_limit``) memory is linear in N = queries + gallery, besides the [queries, gallery]
result itself: the N x N distance matrix of the published algorithm is never held. The distances are then
computed in blocks of rows, each block normalised by its rows' maxima and reduced to its rows' nearest
neighbours; the distances V needs (each sample to its expanded k-reciprocal set) and the query-to-gallery
ones of the result are computed again where they are used. Below it the matrix is held, which is faster.
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


def _pair_distances(feat, sq, rowmax, rows, cols, chunk=8192):
    """The normalised squared distances of the pairs (rows[i], cols[i]), ``chunk`` pairs at a time (each
    holds two [chunk, D] slices of the features)."""
    dots = torch.cat([(feat[rows[s:s + chunk]] * feat[cols[s:s + chunk]]).sum(1)
                      for s in range(0, len(rows), chunk)]) if len(rows) else sq.new_zeros(0)
    d = (sq[rows] + sq[cols] - 2.0 * dots).clamp_min_(0)
    return d / rowmax[rows]


def _distance_rows(feat, sq, start, end, first=0):
    """Squared distances of rows ``start:end`` of ``feat`` to its rows ``first:`` (views, no copy)."""
    return torch.addmm(sq[start:end, None] + sq[None, first:], feat[start:end], feat[first:].T,
                       alpha=-2.0).clamp_min_(0)


def _encoding(feat, sq, rowmax, rank, k1, dist=None):
    """The row-normalised k-reciprocal encoding V as a coalesced sparse COO matrix [N, N]; ``dist``: the
    whole normalised distance matrix when it is held (its entries are looked up instead of recomputed)."""
    N, device = feat.shape[0], feat.device
    half = int(round(k1 / 2))
    fwd = rank[:, : k1 + 1]
    recip = _k_reciprocal_mask(rank, k1)                     # [N, k1+1]
    recip_h = _k_reciprocal_mask(rank, half)                 # [N, half+1]
    # i's k-reciprocal set as sorted keys i * N + j (membership by binary search, no N x N mask)
    members = torch.unique((torch.arange(N, device=device).view(N, 1) * N + fwd)[recip])
    # A k-reciprocal neighbour j of i adds its half-size k-reciprocal set R(j) when more than 2/3 of
    # R(j) lies in i's k-reciprocal set.
    cand = rank[:, : half + 1][fwd]                          # [N, k1+1, half+1]
    cand_ok = recip_h[fwd]
    keys = torch.arange(N, device=device).view(N, 1, 1) * N + cand
    pos = torch.searchsorted(members, keys.reshape(-1)).clamp_max_(max(len(members) - 1, 0))
    inside = (members[pos] == keys.reshape(-1)).view_as(cand) & cand_ok if len(members) else cand_ok & False
    accept = (inside.sum(-1).float() > (2.0 / 3.0) * cand_ok.sum(-1).float()) & recip
    expand = cand_ok & accept.unsqueeze(-1)
    rows = torch.cat([torch.arange(N, device=device).view(N, 1).expand_as(fwd)[recip],
                      torch.arange(N, device=device).view(N, 1, 1).expand_as(cand)[expand]])
    cols = torch.cat([fwd[recip], cand[expand]])
    key = torch.unique(rows * N + cols)
    rows, cols = key // N, key % N
    w = torch.exp(-(dist[rows, cols] if dist is not None else _pair_distances(feat, sq, rowmax, rows, cols)))
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
def re_ranking(q_feat, g_feat, k1=20, k2=6, lambda_value=0.3, device=None, block=2048, dense_limit=2 ** 28):
    """Re-ranked distances [num_query, num_gallery] as a numpy array (float32).

    ``device`` defaults to CUDA when available, else the features' device. Up to ``dense_limit`` entries
    (N x N; 1 GiB of float32 by default, N up to 16,384) the whole distance matrix is held and read where it
    is needed (fastest); above, ``block`` rows of it at a time (memory about ``block`` x N floats besides the
    result) and the distances V and the result need are computed again.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else torch.as_tensor(q_feat).device
    q = torch.as_tensor(q_feat).float().to(device)
    g = torch.as_tensor(g_feat).float().to(device)
    nq = q.shape[0]
    feat = torch.cat([q, g])
    N = feat.shape[0]
    sq = (feat * feat).sum(1)
    k1 = min(k1, N - 1)
    width = min(max(k1 + 1, k2), N)
    rowmax = torch.empty(N, device=device)
    rank = torch.empty(N, width, dtype=torch.long, device=device)
    dist = None
    if N * N <= dense_limit:
        dist = _distance_rows(feat, sq, 0, N)
        dist /= dist.max(1, keepdim=True).values
        rank = _stable_topk(dist, width)
    else:
        for start in range(0, N, block):
            end = min(N, start + block)
            d = _distance_rows(feat, sq, start, end)
            rowmax[start:end] = d.max(1).values
            rank[start:end] = _stable_topk(d.div_(rowmax[start:end, None]), width)
            del d
    V = _encoding(feat, sq, rowmax, rank, k1, dist)
    if k2 != 1:
        V = _query_expansion(V, rank, k2)
    final = _jaccard(V, nq).mul_(1 - lambda_value)
    if dist is not None:
        return final.add_(dist[:nq, nq:], alpha=lambda_value).cpu().numpy()
    for start in range(0, nq, block):
        end = min(nq, start + block)
        final[start:end].add_(_distance_rows(feat, sq, start, end, nq) / rowmax[start:end, None],
                              alpha=lambda_value)
    return final.cpu().numpy()
