"""ReID metrics: CMC, mAP and mINP, and the evaluator used during training and testing.

Protocol (per query): gallery samples of the same identity seen by the same camera are ignored
(RGBNT201, RGBNT100); with scene ids (MSVR310), those of the same identity in the same scene are
ignored instead. Queries without any remaining true match are skipped.
"""
import logging

import numpy as np
import torch

logger = logging.getLogger("signal.metrics")


def _ranked_matches(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids):
    order = np.argsort(distmat, axis=1, kind="stable")
    matches = g_pids[order] == q_pids[:, None]
    if q_sceneids is not None and g_sceneids is not None:
        remove = matches & (np.asarray(g_sceneids)[order] == np.asarray(q_sceneids)[:, None])
    else:
        remove = matches & (g_camids[order] == q_camids[:, None])
    keep = ~remove
    return matches & keep, keep


def evaluate_all(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids=None, g_sceneids=None, max_rank=50):
    """Returns ``(cmc [max_rank], mAP, mINP, num_valid_queries)``; see ``evaluate``."""
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"evaluation needs a non-empty query and gallery, got {num_q} x {num_g}")
    if num_g < max_rank:
        max_rank = num_g
    hits, keep = _ranked_matches(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids)
    valid = hits.any(1)
    if not valid.any():
        raise ValueError("no query has a true match in the gallery under the evaluation protocol")
    hits, keep = hits[valid], keep[valid]
    kept_rank = np.cumsum(keep, axis=1)          # 1-based rank among the kept gallery samples
    cum_hits = np.cumsum(hits, axis=1)
    num_rel = cum_hits[:, -1]
    first = np.where(hits, kept_rank, np.iinfo(np.int64).max).min(1)
    cmc = (first[:, None] <= np.arange(1, max_rank + 1)[None]).mean(0)
    precision = cum_hits / np.maximum(kept_rank, 1)
    ap = (precision * hits).sum(1) / num_rel
    last = np.where(hits, kept_rank, 0).max(1)
    inp = num_rel / last
    return cmc.astype(np.float32), float(ap.mean()), float(inp.mean()), int(valid.sum())


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids=None, g_sceneids=None, max_rank=50):
    """CMC curve and mAP for a [num_query, num_gallery] distance matrix.

    Gallery samples with the query's identity and camera (or scene, when scene ids are given) are
    removed; queries left without a true match are skipped. A gallery smaller than ``max_rank`` gives a
    CMC curve of gallery length. Returns ``(cmc, mAP)``.
    """
    cmc, mAP, _, _ = evaluate_all(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids, max_rank)
    return cmc, mAP


def pairwise_distance(qf, gf):
    """Squared Euclidean distances [nq, ng] (float32, on the features' device)."""
    qf, gf = qf.float(), gf.float()
    d = (qf * qf).sum(1, keepdim=True) + (gf * gf).sum(1)[None] - 2.0 * qf @ gf.T
    return d.clamp_min_(0)


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
        if self.rerank is not None:
            from .reranking import re_ranking
            k1, k2, lam = self.rerank
            distmat = re_ranking(qf, gf, k1, k2, lam)
        else:
            distmat = pairwise_distance(qf, gf).numpy()
        sq, sg = (scenes[:nq], scenes[g]) if self.use_scenes else (None, None)
        cmc, mAP, mINP, nvalid = evaluate_all(distmat, pids[:nq], pids[g], camids[:nq], camids[g], sq, sg,
                                              self.max_rank)
        out = {"mAP": mAP, "mINP": mINP, "num_valid_queries": nvalid}
        for r in (1, 5, 10):
            out[f"Rank-{r}"] = float(cmc[min(r, len(cmc)) - 1])
        return out
