"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), batched in torch: same result as the published algorithm, on CPU or GPU.

Dense [N, N] matrices (N = queries + gallery) replace the per-sample Python loops; the Jaccard term is
computed from the sparse rows of the encoding in query chunks.
"""
import torch


def _k_reciprocal_mask(rank, k):
    """mask[i, c] = rank[i, c] (c < k+1) is a k-reciprocal neighbour of i, [N, k+1] bool."""
    fwd = rank[:, : k + 1]
    bwd = rank[fwd, : k + 1]                                 # [N, k+1, k+1]
    me = torch.arange(rank.shape[0], device=rank.device).view(-1, 1, 1)
    return (bwd == me).any(-1)


@torch.no_grad()
def re_ranking(q_feat, g_feat, k1=20, k2=6, lambda_value=0.3, device=None, chunk=256):
    """Re-ranked distances [num_query, num_gallery] as a numpy array.

    ``device`` defaults to CUDA when available (then the features' device).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else q_feat.device
    q = torch.as_tensor(q_feat).float().to(device)
    g = torch.as_tensor(g_feat).float().to(device)
    nq = q.shape[0]
    feat = torch.cat([q, g])
    N = feat.shape[0]
    sq = (feat * feat).sum(1)
    dist = (sq[:, None] + sq[None] - 2.0 * feat @ feat.T).clamp_min_(0)
    dist /= dist.max(1, keepdim=True).values
    kmax = max(k1 + 1, k2)
    rank = torch.topk(dist, min(kmax, N), dim=1, largest=False).indices
    rank = _stable_prefix(dist, rank)

    k1 = min(k1, N - 1)
    half = int(round(k1 / 2))
    fwd = rank[:, : k1 + 1]
    recip = _k_reciprocal_mask(rank, k1)                     # [N, k1+1]
    recip_h = _k_reciprocal_mask(rank, half)                 # [N, half+1]
    KR = torch.zeros(N, N, dtype=torch.bool, device=device)
    KR.scatter_(1, fwd, recip)
    # Expansion: candidate j (a k-reciprocal neighbour of i) adds its half-size k-reciprocal set R(j)
    # when more than 2/3 of R(j) lies in i's k-reciprocal set.
    cand = rank[:, : half + 1][fwd]                          # [N, k1+1, half+1]: R(j) candidates
    cand_ok = recip_h[fwd]                                   # which of them are in R(j)
    in_kr = KR.gather(1, cand.reshape(N, -1)).view_as(cand) & cand_ok
    size = cand_ok.sum(-1)
    accept = (in_kr.sum(-1).float() > (2.0 / 3.0) * size.float()) & recip
    expand = cand_ok & accept.unsqueeze(-1)
    mask = KR.clone()
    rows = torch.arange(N, device=device).view(N, 1, 1).expand_as(cand)
    mask[rows[expand], cand[expand]] = True
    V = torch.where(mask, torch.exp(-dist), torch.zeros((), device=device))
    V /= V.sum(1, keepdim=True)
    if k2 != 1:
        V_qe = torch.empty_like(V)
        for s in range(0, N, chunk):
            V_qe[s: s + chunk] = V[rank[s: s + chunk, :k2]].mean(1)
        V = V_qe
    # Jaccard distance of the queries to the gallery: 1 - sum(min) / sum(max) = 1 - m / (2 - m), where
    # m = sum_j min(V[q, j], V[g, j]); only the non-zero entries of V[q] contribute.
    jaccard = torch.empty(nq, N - nq, device=device)
    VgT = V[nq:].T.contiguous()                              # [N, Ng]
    nnz = max(int((V[:nq] != 0).sum(1).max().item()), 1)
    step = max(1, int(5e7 // (nnz * max(N - nq, 1))))
    for s in range(0, nq, step):
        e = min(s + step, nq)
        vals, idx = V[s:e].topk(nnz, dim=1)                  # non-zero entries (padded with zeros)
        tmin = torch.minimum(vals.unsqueeze(-1), VgT[idx]).sum(1)
        jaccard[s:e] = 1 - tmin / (2 - tmin)
    final = jaccard * (1 - lambda_value) + dist[:nq, nq:] * lambda_value
    return final.cpu().numpy()


def _stable_prefix(dist, rank):
    """Order the retrieved neighbours by (distance, index), as a stable argsort of each row would."""
    by_index = rank.sort(dim=1).values
    perm = torch.argsort(dist.gather(1, by_index), dim=1, stable=True)
    return by_index.gather(1, perm)
