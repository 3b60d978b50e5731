"""ReID metrics: CMC, mAP and mINP, and the evaluator used during training and testing.

Protocol (per query): gallery samples of the same identity seen by the same camera are ignored
(RGBNT201, RGBNT100); with scene ids (MSVR310), those of the same identity in the same scene are
ignored instead. Queries without any remaining true match are skipped.
"""
import logging

import numpy as np
import torch

logger = logging.getLogger("signal.metrics")


# Queries per block: the distance block and its ranking stay within ~256 MB whatever the gallery size.
_BLOCK_ELEMENTS = 1 << 26


def pairwise_distance(qf, gf):
    """Squared Euclidean distances [nq, ng], float32 on the features' device, computed as the official code
    does (``|q|^2 + |g|^2``, then ``addmm`` with alpha -2; no clamping), so rankings and their ties are
    the official ones."""
    qf, gf = qf.float(), gf.float()
    d = (qf * qf).sum(1, keepdim=True).expand(len(qf), len(gf)) + (gf * gf).sum(1, keepdim=True).expand(len(gf), len(qf)).t()
    return d.addmm_(qf, gf.t(), beta=1, alpha=-2)


def _sorted_row_ranks(d, hits, removed):
    """Ranks (1-based, among the kept samples) of the true matches of one query, from NumPy's default
    argsort of its distances: the official ranking, ties included."""
    order = np.argsort(d)
    kept_rank = np.cumsum(~removed[order])
    return kept_rank[hits[order]]


def _same_identity(q_pids, g_pids):
    """(rows, cols) of every (query, gallery sample) pair of one identity, row-major."""
    g_order = np.argsort(g_pids, kind="stable")
    lo = np.searchsorted(g_pids[g_order], q_pids, side="left")
    hi = np.searchsorted(g_pids[g_order], q_pids, side="right")
    rows = np.repeat(np.arange(len(q_pids)), hi - lo)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo)
    return rows, g_order[np.repeat(lo, hi - lo) + within]


def _block_metrics(d, q_pids, g_pids, q_keys, g_keys):
    """Per-query (first hit rank, AP, mINP term, valid) for a block of distances ``d`` [b, ng] (a CPU tensor
    this function may modify).

    The ranking is never sorted: the rank of a true match among the kept samples is one plus the number of
    kept samples closer than it. Only samples no farther than the query's farthest true match can count,
    so only those are located among the query's sorted true-match distances. A query where a sample of
    another identity is exactly as far as a true match (a tie whose order decides a rank), or with a
    non-finite distance, is ranked by NumPy's default argsort instead, as the official evaluation does;
    ties among true matches or with removed samples change no metric."""
    b, ng = d.shape
    rows, cols = _same_identity(q_pids, g_pids)
    drop = g_keys[cols] == q_keys[rows]                          # removed by the protocol
    hit_rows, hit_cols = rows[~drop], cols[~drop]
    num_rel = np.bincount(hit_rows, minlength=b)
    valid = num_rel > 0
    width = int(num_rel.max()) if b else 0
    ranks = np.ones((b, max(width, 1)))
    if not width:
        return ranks[:, 0], np.zeros(b), np.zeros(b), valid
    finite = bool(torch.isfinite(d.sum()))
    start = np.cumsum(num_rel) - num_rel
    # true matches by query (hit_rows is sorted), then distance: each query's row of a padded matrix, sorted
    within = torch.from_numpy(np.arange(len(hit_rows)) - start[hit_rows])
    padded = torch.full((b, width), float("inf"), dtype=d.dtype)
    padded[torch.from_numpy(hit_rows), within] = d[torch.from_numpy(hit_rows), torch.from_numpy(hit_cols)]
    pos_rows = hit_rows
    pos_vals = padded.sort(1).values[torch.from_numpy(hit_rows), within].numpy().astype(np.float64)
    farthest = np.full(b, -np.inf)
    farthest[valid] = pos_vals[start[valid] + num_rel[valid] - 1]
    same_r, same_c = torch.from_numpy(rows), torch.from_numpy(cols)
    saved = d[same_r, same_c].clone()
    d[same_r, same_c] = float("inf")                              # count other identities only
    if finite:
        flat = torch.nonzero((d <= torch.from_numpy(farthest).to(d.dtype)[:, None]).reshape(-1))[:, 0]
        sel_rows = (flat // ng).numpy()
        sel_vals = d.reshape(-1)[flat].numpy().astype(np.float64)
        # one sorted key per true match and per candidate: query index * span + distance (exact in float64)
        both = np.concatenate([pos_vals, sel_vals])
        span = float(both.max()) - float(both.min()) + 1.0
        pos_keys = pos_rows * span + (pos_vals - both.min())
        sel_keys = sel_rows * span + (sel_vals - both.min())
        at = np.searchsorted(pos_keys, sel_keys, side="right")    # true matches (of all queries) before
        right = at - start[sel_rows]
        equal = (right > 0) & (pos_keys[np.maximum(at - 1, 0)] == sel_keys)
        tie = np.bincount(sel_rows, weights=equal, minlength=b) > 0
        # rank of the k-th true match: k earlier true matches + the other identities closer than it + 1
        hist = np.bincount(sel_rows * (width + 1) + right, minlength=b * (width + 1)).reshape(b, width + 1)
        ranks = np.cumsum(hist, axis=1)[:, :width] + np.arange(1, width + 1)[None]
    else:                                                         # NaN or inf distances: the official way
        tie = np.ones(b, dtype=bool)
    redo = np.flatnonzero(tie & valid)
    if len(redo):
        d[same_r, same_c] = saved                                # the original distances
        for r in redo:
            hits_r, removed_r = np.zeros(ng, dtype=bool), np.zeros(ng, dtype=bool)
            hits_r[hit_cols[hit_rows == r]] = True
            removed_r[cols[(rows == r) & drop]] = True
            rr = _sorted_row_ranks(d[r].numpy(), hits_r, removed_r)
            ranks[r, :len(rr)] = rr
    position = np.arange(1, width + 1, dtype=np.float64)[None]
    ap = np.where(position <= num_rel[:, None], position / ranks, 0.0).sum(1) / np.maximum(num_rel, 1)
    last = ranks[np.arange(b), np.maximum(num_rel - 1, 0)]
    return ranks[:, 0], ap, num_rel / last, valid


def _distance_blocks(distmat, qf, gf, block):
    """(start, distances [b, ng] as a CPU tensor) per block of queries. Distances are computed in slices of
    2,048 gallery samples (faster for the matrix multiply, same values)."""
    nq = len(qf) if distmat is None else len(distmat)
    for start in range(0, nq, block):
        if distmat is None:
            q = qf[start:start + block]
            d = torch.cat([pairwise_distance(q, gf[j:j + 2048]) for j in range(0, len(gf), 2048)], 1).cpu()
        else:
            d = torch.from_numpy(np.array(distmat[start:start + block], copy=True))
        yield start, d


def evaluate_all(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids=None, g_sceneids=None, max_rank=50,
                 q_feats=None, g_feats=None):
    """Returns ``(cmc [max_rank], mAP, mINP, num_valid_queries)``; see ``evaluate``.

    ``distmat`` may be None with ``q_feats`` / ``g_feats`` given: distances are then computed block by block
    of queries, so no dense [nq, ng] matrix is ever held (10k x 50k and beyond). Rankings use NumPy's
    default argsort of float32 distances, as the official evaluation (``_block_metrics`` reaches the same
    ranks of the true matches without sorting whole rows)."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if distmat is not None:
        distmat = np.asarray(distmat)
        if distmat.dtype != np.float32 and distmat.dtype != np.float64:
            distmat = distmat.astype(np.float32)
    num_q, num_g = (distmat.shape if distmat is not None else (len(q_feats), len(g_feats)))
    if num_q == 0 or num_g == 0:
        raise ValueError(f"evaluation needs a non-empty query and gallery, got {num_q} x {num_g}")
    max_rank = min(max_rank, num_g)
    scenes = q_sceneids is not None and g_sceneids is not None
    q_keys = np.asarray(q_sceneids if scenes else q_camids)
    g_keys = np.asarray(g_sceneids if scenes else g_camids)
    block = max(1, _BLOCK_ELEMENTS // num_g)
    firsts, aps, inps, valids = [], [], [], []
    for start, d in _distance_blocks(distmat, q_feats, g_feats, block):
        sl = slice(start, start + len(d))
        f, a, i, v = _block_metrics(d, q_pids[sl], g_pids, q_keys[sl], g_keys)
        firsts.append(f), aps.append(a), inps.append(i), valids.append(v)
    valid = np.concatenate(valids)
    if not valid.any():
        raise ValueError("no query has a true match in the gallery under the evaluation protocol")
    first = np.concatenate(firsts)[valid]
    cmc = (first[:, None] <= np.arange(1, max_rank + 1)[None]).sum(0).astype(np.float32) / np.float32(valid.sum())
    return cmc, float(np.mean(np.concatenate(aps)[valid])), float(np.mean(np.concatenate(inps)[valid])), int(valid.sum())


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids=None, g_sceneids=None, max_rank=50):
    """CMC curve and mAP for a [num_query, num_gallery] distance matrix.

    Gallery samples with the query's identity and camera (or scene, when scene ids are given) are
    removed; queries left without a true match are skipped. A gallery smaller than ``max_rank`` gives a
    CMC curve of gallery length. Returns ``(cmc, mAP)``.
    """
    cmc, mAP, _, _ = evaluate_all(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids, max_rank)
    return cmc, mAP


class Evaluator:
    """Accumulates features and labels (``reset / process / evaluate``) and returns named metrics.

    Args:
        num_query: the first ``num_query`` processed samples are queries, the rest the gallery; when
            nothing else is processed the gallery is the query set itself.
        use_scenes: use the scene protocol (MSVR310).
        rerank: None or ``(k1, k2, lambda)`` for k-reciprocal re-ranking.
    """

    def __init__(self, num_query, use_scenes=False, max_rank=50, rerank=None):
        self.num_query, self.use_scenes, self.max_rank, self.rerank = num_query, use_scenes, max_rank, rerank
        self.reset()

    def reset(self):
        self.feats, self.pids, self.camids, self.sceneids, self.indices = [], [], [], [], []

    def process(self, feat, pid, camid, sceneid, index=None):
        self.feats.append(feat.detach().float().cpu())
        self.pids.append(np.asarray(pid))
        self.camids.append(np.asarray(camid))
        self.sceneids.append(np.asarray(sceneid))
        if index is not None:
            self.indices.append(np.asarray(index))

    def arrays(self):
        """(features, pids, camids, sceneids) of everything processed."""
        return (torch.cat(self.feats), np.concatenate(self.pids), np.concatenate(self.camids),
                np.concatenate(self.sceneids))

    def evaluate(self):
        feats, pids, camids, scenes = self.arrays()
        nq = self.num_query
        if len(feats) == nq:
            qf, gf, g = feats, feats, slice(0, nq)
        else:
            qf, gf, g = feats[:nq], feats[nq:], slice(nq, None)
        distmat = None
        if self.rerank is not None:
            from .reranking import re_ranking
            k1, k2, lam = self.rerank
            distmat = re_ranking(qf, gf, k1, k2, lam)
        sq, sg = (scenes[:nq], scenes[g]) if self.use_scenes else (None, None)
        cmc, mAP, mINP, nvalid = evaluate_all(distmat, pids[:nq], pids[g], camids[:nq], camids[g], sq, sg,
                                              self.max_rank, q_feats=qf, g_feats=gf)
        out = {"mAP": mAP, "mINP": mINP, "num_valid_queries": nvalid}
        for r in (1, 5, 10):
            out[f"Rank-{r}"] = float(cmc[min(r, len(cmc)) - 1])
        return out
