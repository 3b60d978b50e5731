"""ReID metrics: CMC, mAP and mINP, and the evaluator used during training and testing.

Protocol (per query): gallery samples of the same identity seen by the same camera are ignored
(RGBNT201, RGBNT100); with scene ids (MSVR310), those of the same identity in the same scene are
ignored instead. Queries without any remaining true match are skipped.
"""
import logging
from concurrent.futures import ThreadPoolExecutor

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


def _same_identity(q_pids, g_pids):
    """(rows, cols) of every (query, gallery sample) pair of one identity, row-major."""
    g_order = np.argsort(g_pids, kind="stable")
    lo = np.searchsorted(g_pids[g_order], q_pids, side="left")
    hi = np.searchsorted(g_pids[g_order], q_pids, side="right")
    rows = np.repeat(np.arange(len(q_pids)), hi - lo)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo)
    return rows, g_order[np.repeat(lo, hi - lo) + within]


# A tie between a true match and a sample of another identity leaves that true match's rank open by one
# place per tied sample. The evaluation follows NumPy's argsort (the official order) for the queries whose
# ties could change the CMC, and for as many others as it takes to keep mAP and mINP within this much of
# the official values (``_within_budget``).
TIE_TOLERANCE = 1e-7


def _over_rows(num_rows, work):
    """Call ``work(lo, hi)`` on consecutive ranges of ``num_rows`` rows, one range per thread torch uses
    (NumPy releases the GIL while it sorts)."""
    n = max(1, min(torch.get_num_threads(), num_rows))
    bounds = np.linspace(0, num_rows, n + 1).astype(int)
    if n == 1:
        work(0, num_rows)
        return
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: work(bounds[i], bounds[i + 1]), range(n)))


def _sort_rows(x, arg=False):
    """``np.sort(x, axis=1)`` (``np.argsort`` with ``arg``: NumPy's default kind, the official ranking), over
    the rows in parallel (``_over_rows``)."""
    fn = np.argsort if arg else np.sort
    out = np.empty(x.shape, dtype=np.int64 if arg else x.dtype)

    def work(lo, hi):
        out[lo:hi] = fn(x[lo:hi], axis=1)

    _over_rows(len(x), work)
    return out


def _sorted_up_to(x, limit):
    """Each row of ``x`` [b, n] sorted, keeping only its values ``<= limit`` (per row; a row of a [b, W]
    array padded with +inf): the ranks of true matches need no farther sample. When most values are kept
    (weak features) whole rows are sorted instead (``_sort_rows``), which is then faster."""
    keep = x <= limit[:, None]
    count = keep.sum(1)
    if count.sum() > x.size // 2:
        return _sort_rows(x)
    out = np.full((len(x), max(int(count.max()), 1)), np.inf, dtype=x.dtype)

    def work(lo, hi):
        for r in range(lo, hi):
            v = x[r][keep[r]]
            v.sort()
            out[r, :len(v)] = v

    _over_rows(len(x), work)
    return out


def _padded_sorted(d, rows, cols, b):
    """Each query's values ``d[rows, cols]`` sorted ascending in a row of a [b, W] tensor padded with +inf
    (W: the largest count, at least 1), and the count per query."""
    count = np.bincount(rows, minlength=b)
    width = max(int(count.max()) if len(rows) else 0, 1)
    out = torch.full((b, width), float("inf"), dtype=d.dtype)
    if len(rows):
        within = torch.from_numpy(np.arange(len(rows)) - (np.cumsum(count) - count)[rows])
        r, c = torch.from_numpy(rows), torch.from_numpy(cols)
        out[r, within] = d[r, c]
        out = out.sort(1).values
    return out.contiguous(), count


def _block_metrics(d, q_pids, g_pids, q_keys, g_keys, max_rank=50):
    """Per-query (first hit rank, AP, mINP term, valid) for a block of distances ``d`` [b, ng] (a CPU tensor).

    Each row is sorted by value only (no indices; NumPy's vectorised sort, on every thread), and the rank of
    a query's k-th true match among the kept samples is ``1 + k +`` the number of samples of other
    identities strictly closer, counted by searching the true match's distance in the sorted row and in the
    query's sorted true-match and removed distances. The cost is one sort per row whatever the feature
    quality. A sample of another identity exactly as far as a true match (a tie whose order decides a rank)
    is resolved with NumPy's default argsort of the row, as the official evaluation does, unless the tie
    cannot change the CMC and the block's open ties move mAP and mINP by at most ``TIE_TOLERANCE`` (the
    middle of each query's possible range is then taken, ``_within_budget``); ties among true matches or
    with removed samples change no metric. A block with a non-finite distance is ranked the official way."""
    b, ng = d.shape
    rows, cols = _same_identity(q_pids, g_pids)
    drop = g_keys[cols] == q_keys[rows]                          # removed by the protocol
    hit_rows, hit_cols = rows[~drop], cols[~drop]
    pos, num_rel = _padded_sorted(d, hit_rows, hit_cols, b)
    valid = num_rel > 0
    width = int(num_rel.max()) if b else 0
    if not width:
        return np.ones(b), np.zeros(b), np.zeros(b), valid
    k = np.arange(width)[None]
    inside = k < num_rel[:, None]
    position = (k + 1).astype(np.float64)
    if bool(torch.isfinite(d.sum())):
        removed, _ = _padded_sorted(d, rows[drop], cols[drop], b)
        farthest = pos.gather(1, torch.from_numpy(np.maximum(num_rel - 1, 0))[:, None])[:, 0].numpy()
        ranked = torch.from_numpy(_sorted_up_to(d.numpy(), np.where(valid, farthest, -np.inf).astype(np.float32)))

        def before(seq):  # (strictly smaller, smaller or equal) counts of each true-match distance in seq
            return (torch.searchsorted(seq, pos).numpy().astype(np.int64),
                    torch.searchsorted(seq, pos, right=True).numpy().astype(np.int64))

        (all_lt, all_le), (pos_lt, pos_le), (rem_lt, rem_le) = before(ranked), before(pos), before(removed)
        low = (1 + k + all_lt - pos_lt - rem_lt).astype(np.float64)          # tied others after it
        high = low + np.where(inside, (all_le - all_lt) - (pos_le - pos_lt) - (rem_le - rem_lt), 0)  # before it
        ap_hi = np.where(inside, position / low, 0.0).sum(1) / np.maximum(num_rel, 1)
        ap_lo = np.where(inside, position / high, 0.0).sum(1) / np.maximum(num_rel, 1)
        last = np.maximum(num_rel - 1, 0)
        inp_hi, inp_lo = num_rel / low[np.arange(b), last], num_rel / high[np.arange(b), last]
        first_open = (high[:, 0] > low[:, 0]) & (low[:, 0] <= max_rank)
        exact = _within_budget(ap_hi - ap_lo, inp_hi - inp_lo, valid, first_open)
        first, ap, inp = low[:, 0], (ap_hi + ap_lo) / 2, (inp_hi + inp_lo) / 2
    else:                                                         # NaN or inf distances: the official way
        exact = np.zeros(b, dtype=bool)
        first, ap, inp = np.ones(b), np.zeros(b), np.zeros(b)
    redo = np.flatnonzero(~exact & valid)                        # the official order decides
    for lo in range(0, len(redo), max(1, _BLOCK_ELEMENTS // 8 // ng)):
        part = redo[lo:lo + max(1, _BLOCK_ELEMENTS // 8 // ng)]
        first[part], ap[part], inp[part] = _argsort_metrics(d[torch.from_numpy(part)].numpy(), q_pids[part],
                                                            g_pids, q_keys[part], g_keys)
    return first, ap, inp, valid


def _within_budget(ap_width, inp_width, valid, first_open):
    """Queries whose open ties may stay open: the middle of each AP (INP) range is off by at most half its
    width, so open ties are accepted, smallest first, while their half-widths sum to at most TIE_TOLERANCE
    per valid query of the block for AP and for INP (mAP and mINP then move by at most TIE_TOLERANCE). A
    tie that can change the CMC (the first true match's rank within max_rank) is never accepted."""
    ok = (ap_width == 0) & (inp_width == 0) & ~first_open
    open_ = np.flatnonzero(~ok & ~first_open & valid)
    if len(open_):
        budget = 2 * TIE_TOLERANCE * int(valid.sum())
        order = open_[np.argsort(ap_width[open_] + inp_width[open_], kind="stable")]
        fits = (np.cumsum(ap_width[order]) <= budget) & (np.cumsum(inp_width[order]) <= budget)
        ok[order[:int(np.argmin(fits)) if not fits.all() else len(order)]] = True
    return ok | ~valid


# The figures an evaluation reports, in the order of every table and log line.
METRIC_NAMES = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def removed_by_protocol(q_pid, q_key, g_pids, g_keys):
    """The evaluation protocol in one place: gallery samples of the query's identity with the query's key
    (its camera, or its scene under the scene protocol) are removed before ranking. Broadcasts."""
    return (g_pids == q_pid) & (g_keys == q_key)


def _argsort_metrics(d, q_pids, g_pids, q_keys, g_keys):
    """(first hit rank, AP, mINP term) of queries with a true match, ranked as the official loop does: NumPy's
    default argsort of each row of ``d`` [m, ng] (on every thread), same-identity samples of the query's
    camera (scene) removed."""
    order = _sort_rows(d, arg=True)
    same = g_pids[order] == q_pids[:, None]
    removed = removed_by_protocol(q_pids[:, None], q_keys[:, None], g_pids[order], g_keys[order])
    hit = same & ~removed
    kept_rank = np.cumsum(~removed, axis=1)
    num_rel = hit.sum(1)
    rows = np.arange(len(d))
    first = kept_rank[rows, hit.argmax(1)].astype(np.float64)
    last = kept_rank[rows, d.shape[1] - 1 - hit[:, ::-1].argmax(1)].astype(np.float64)
    precision = np.divide(np.cumsum(hit, axis=1), kept_rank, out=np.zeros(hit.shape), where=hit)
    ap = precision.sum(1) / num_rel
    return first, ap, num_rel / last


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
        f, a, i, v = _block_metrics(d, q_pids[sl], g_pids, q_keys[sl], g_keys, max_rank)
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

    def evaluate(self, gallery=None, pair=None):
        """The metrics of the processed queries against the gallery. ``gallery``: another Evaluator over the
        same samples in the same order, whose features the gallery side takes (query and gallery encoded
        differently: another setting of missing modalities); ``pair(query, gallery)`` -> the two feature
        matrices made comparable (a method whose features differ in layout between the settings)."""
        feats, pids, camids, scenes = self.arrays()
        gfeats = feats
        if gallery is not None:
            gfeats, gpids = gallery.arrays()[:2]
            if len(gfeats) != len(feats) or not np.array_equal(gpids, pids):
                raise ValueError("Evaluator.evaluate(gallery=...): the gallery evaluator holds other samples")
        nq = self.num_query
        if len(feats) == nq:
            qf, gf, g = feats, gfeats, slice(0, nq)
        else:
            qf, gf, g = feats[:nq], gfeats[nq:], slice(nq, None)
        if pair is not None:
            qf, gf = pair(qf, gf)
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
