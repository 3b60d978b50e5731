import numpy as np
import pytest
import torch

from utils.metrics import Evaluator, evaluate, evaluate_all
from utils.reranking import re_ranking


def test_cmc_and_map_known_answer_camera_protocol():
    # One query (id 1, cam 0). Gallery sorted by distance: [id1 cam0 (removed), id2, id1 cam1, id3, id1 cam2]
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([1, 2, 1, 3, 1])
    g_cams = np.array([0, 0, 1, 0, 2])
    cmc, mAP = evaluate(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    # Kept ranking: id2, id1, id3, id1 -> hits at ranks 2 and 4: AP = (1/2 + 2/4) / 2
    assert mAP == pytest.approx(0.5)
    assert cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    _, _, mINP, n = evaluate_all(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    assert mINP == pytest.approx(2 / 4) and n == 1


def test_scene_protocol_removes_same_scene_not_same_camera():
    dist = np.array([[0.1, 0.2, 0.3]])
    g_pids = np.array([1, 1, 2])
    g_cams = np.array([0, 1, 0])
    g_scenes = np.array([5, 6, 5])
    # Camera protocol: the first gallery item (same cam) is removed -> hit at rank 1 (item 2).
    cmc_c, map_c = evaluate(dist, np.array([1]), g_pids, np.array([0]), g_cams)
    # Scene protocol (query scene 6): the second item (same scene) is removed, the first kept.
    cmc_s, map_s = evaluate(dist, np.array([1]), g_pids, np.array([0]), g_cams, np.array([6]), g_scenes)
    assert map_c == pytest.approx(1.0) and map_s == pytest.approx(1.0)
    cmc_s2, map_s2 = evaluate(dist, np.array([1]), g_pids, np.array([0]), g_cams, np.array([5]), g_scenes)
    # query scene 5: item 0 removed, item 1 (scene 6) is a hit at rank 1
    assert cmc_s2[0] == 1.0
    dist2 = np.array([[0.3, 0.2, 0.1]])
    cmc, mAP = evaluate(dist2, np.array([1]), g_pids, np.array([0]), g_cams, np.array([6]), g_scenes)
    # ranking: id2 (scene5), id1 (scene6, removed), id1 (scene5) -> hit at rank 2
    assert cmc.tolist()[:2] == [0.0, 1.0] and mAP == pytest.approx(0.5)


def test_queries_without_valid_match_are_skipped_and_small_gallery():
    dist = np.array([[0.1, 0.2], [0.2, 0.1]])
    g_pids = np.array([1, 2])
    g_cams = np.array([1, 1])
    # query 0: id 1 cam 0 -> hit at rank 1. query 1: id 3 -> no match at all -> skipped.
    cmc, mAP, _, n = evaluate_all(dist, np.array([1, 3]), g_pids, np.array([0, 0]), g_cams, max_rank=50)
    assert n == 1 and mAP == pytest.approx(1.0) and len(cmc) == 2
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(dist, np.array([3, 4]), g_pids, np.array([0, 0]), g_cams)


def test_map_matches_a_per_query_loop():
    rng = np.random.default_rng(0)
    nq, ng = 20, 60
    dist = rng.random((nq, ng))
    q_pids, g_pids = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    cmc, mAP = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    aps, firsts = [], []
    for i in range(nq):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        m = (g_pids[order] == q_pids[i])[keep]
        if not m.any():
            continue
        hits = np.flatnonzero(m)
        aps.append(np.mean([(j + 1) / (h + 1) for j, h in enumerate(hits)]))
        firsts.append(hits[0])
    assert mAP == pytest.approx(np.mean(aps))
    assert cmc[0] == pytest.approx(np.mean(np.array(firsts) == 0))
    assert cmc[4] == pytest.approx(np.mean(np.array(firsts) <= 4))


def test_evaluator_gallery_is_query():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ev = Evaluator(num_query=4)
    ev.process(feats, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.zeros(4))
    out = ev.evaluate()
    assert out["mAP"] == pytest.approx(1.0) and out["Rank-1"] == 1.0


def published_re_ranking(probFea, galFea, k1, k2, lambda_value):
    """Straight loop transcription of the published algorithm (Zhong et al., CVPR 2017)."""
    query_num = probFea.shape[0]
    feat = np.concatenate([probFea, galFea]).astype(np.float64)
    all_num = feat.shape[0]
    sq = (feat ** 2).sum(1)
    original_dist = sq[:, None] + sq[None] - 2 * feat @ feat.T
    original_dist = np.maximum(original_dist, 0)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    for i in range(all_num):
        fwd = initial_rank[i, :k1 + 1]
        bwd = initial_rank[fwd, :k1 + 1]
        k_rec = fwd[np.where(bwd == i)[0]]
        expansion = k_rec
        for cand in k_rec:
            c_fwd = initial_rank[cand, :int(np.around(k1 / 2)) + 1]
            c_bwd = initial_rank[c_fwd, :int(np.around(k1 / 2)) + 1]
            c_rec = c_fwd[np.where(c_bwd == cand)[0]]
            if len(np.intersect1d(c_rec, k_rec)) > 2 / 3 * len(c_rec):
                expansion = np.append(expansion, c_rec)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
    jaccard = np.zeros((query_num, all_num))
    for i in range(query_num):
        temp_min = np.zeros(all_num)
        for j in np.where(V[i] != 0)[0]:
            rows = np.where(V[:, j] != 0)[0]
            temp_min[rows] += np.minimum(V[i, j], V[rows, j])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist[:query_num] * lambda_value
    return final[:, query_num:]


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0), (3, 2, 1.0)])
def test_re_ranking_equals_published_algorithm(k1, k2, lam):
    rng = np.random.default_rng(k1)
    centers = rng.normal(size=(6, 16))
    q = centers[rng.integers(0, 6, 12)] + 0.5 * rng.normal(size=(12, 16))
    g = centers[rng.integers(0, 6, 40)] + 0.5 * rng.normal(size=(40, 16))
    ref = published_re_ranking(q, g, k1, k2, lam)
    ours = re_ranking(torch.tensor(q), torch.tensor(g), k1, k2, lam)
    assert ours.shape == (12, 40)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
