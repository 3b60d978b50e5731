import numpy as np
import pytest
import torch

from reference import official
from utils.metrics import Evaluator, evaluate, evaluate_all, pairwise_distance
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


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0), (3, 2, 1.0)])
def test_re_ranking_equals_published_algorithm(k1, k2, lam):
    rng = np.random.default_rng(k1)
    centers = rng.normal(size=(6, 16))
    q = centers[rng.integers(0, 6, 12)] + 0.5 * rng.normal(size=(12, 16))
    g = centers[rng.integers(0, 6, 40)] + 0.5 * rng.normal(size=(40, 16))
    ref = official.re_ranking(torch.tensor(q), torch.tensor(g), k1, k2, lam, dtype=np.float64)
    ours = re_ranking(torch.tensor(q), torch.tensor(g), k1, k2, lam)
    assert ours.shape == (12, 40)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    # the distance matrix in blocks of rows (memory linear in N): the same result with blocks of 5
    np.testing.assert_allclose(re_ranking(torch.tensor(q), torch.tensor(g), k1, k2, lam, block=5, dense_limit=0),
                               ours, atol=1e-6)
    # the official code stores the weights and Jaccard distances in float16: equal up to its rounding
    half = official.re_ranking(torch.tensor(q).float(), torch.tensor(g).float(), k1, k2, lam)
    np.testing.assert_allclose(ours, half, atol=2e-3)


def _features_with_ties(nq, ng, dim=16, ids=6, seed=0):
    """Features quantised to a few levels with duplicated gallery rows, so many distances tie exactly."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randint(0, 3, (nq + ng, dim), generator=g).float(), dim=1)
    feats[nq + 1::3] = feats[nq::3][: len(feats[nq + 1::3])]
    pids = torch.randint(0, ids, (nq + ng,), generator=g).numpy()
    cams = torch.randint(0, 3, (nq + ng,), generator=g).numpy()
    scenes = torch.randint(0, 4, (nq + ng,), generator=g).numpy()
    return feats[:nq], feats[nq:], pids[:nq], pids[nq:], cams[:nq], cams[nq:], scenes[:nq], scenes[nq:]


@pytest.mark.parametrize("scenes", [False, True])
def test_evaluation_equals_the_official_loop_with_ties(scenes):
    qf, gf, qp, gp, qc, gc, qs, gs = _features_with_ties(40, 300)
    dist = official.euclidean_distance(qf, gf)
    assert len(np.unique(dist)) < dist.size / 2                        # plenty of exact ties
    sq, sg = (qs, gs) if scenes else (None, None)
    ref_cmc, ref_map, ref_inp = official.eval_func(dist, qp, gp, qc, gc, 50, sq, sg)
    for kwargs in ({"distmat": dist}, {"distmat": None, "q_feats": qf, "g_feats": gf}):
        d = kwargs.pop("distmat")
        cmc, mAP, mINP, _ = evaluate_all(d, qp, gp, qc, gc, sq, sg, 50, **kwargs)
        assert np.array_equal(cmc, ref_cmc)
        assert mAP == pytest.approx(ref_map, rel=1e-12) and mINP == pytest.approx(ref_inp, rel=1e-12)
    assert np.array_equal(pairwise_distance(qf, gf).numpy(), dist)


def test_blocks_of_queries_give_the_same_metrics(monkeypatch):
    import utils.metrics as metrics
    g = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(50, 8, generator=g), torch.randn(400, 8, generator=g)
    qp, gp = np.arange(50) % 7, np.arange(400) % 7
    qc, gc = np.zeros(50, int), np.arange(400) % 2
    whole = evaluate_all(None, qp, gp, qc, gc, q_feats=qf, g_feats=gf)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 400 * 7)          # blocks of 7 queries
    blocked = evaluate_all(None, qp, gp, qc, gc, q_feats=qf, g_feats=gf)
    assert np.array_equal(whole[0], blocked[0]) and whole[1:] == pytest.approx(blocked[1:], rel=1e-12)


def test_non_finite_distances_follow_numpy_argsort():
    qf, gf, qp, gp, qc, gc, _, _ = _features_with_ties(20, 100, seed=4)
    dist = official.euclidean_distance(qf, gf)
    dist[3, 5] = np.nan
    dist[7, :4] = np.inf
    ref_cmc, ref_map, ref_inp = official.eval_func(dist, qp, gp, qc, gc)
    cmc, mAP, mINP, _ = evaluate_all(dist, qp, gp, qc, gc)
    assert np.array_equal(cmc, ref_cmc) and mAP == pytest.approx(ref_map, rel=1e-12)
    assert mINP == pytest.approx(ref_inp, rel=1e-12)


def test_equal_distances_between_true_matches_and_others():
    """Two true matches at one distance (their order changes nothing) and a sample of another identity
    at a true match's distance (its order decides a rank: the official argsort is followed)."""
    dist = np.array([[0.1, 0.2, 0.3, 0.3, 0.4, 0.5, 0.45, 0.45],
                     [0.5, 0.3, 0.3, 0.1, 0.2, 0.3, 0.9, 0.3]], dtype=np.float32)
    g_pids = np.array([1, 2, 1, 1, 2, 1, 1, 3])
    g_cams = np.array([1, 1, 1, 1, 1, 1, 0, 1])
    q_pids, q_cams = np.array([1, 1]), np.array([0, 0])
    ref = official.eval_func(dist, q_pids, g_pids, q_cams, g_cams)
    cmc, mAP, mINP, _ = evaluate_all(dist, q_pids, g_pids, q_cams, g_cams)
    assert np.array_equal(cmc[:len(ref[0])], ref[0])          # the official curve stops at the kept length
    assert mAP == pytest.approx(ref[1], rel=1e-12) and mINP == pytest.approx(ref[2], rel=1e-12)
    assert mAP < 1.0                                             # the tie decided a rank


def test_open_ties_keep_the_cmc_exact_and_map_within_the_tolerance(monkeypatch):
    """Distances on a coarse grid tie everywhere: queries whose ties could change the CMC, or move mAP / mINP
    beyond TIE_TOLERANCE in total, follow the official argsort; the rest take the middle of their range.
    The CMC equals the official loop's and mAP / mINP are within the tolerance of it."""
    import utils.metrics as metrics
    rng = np.random.default_rng(0)
    nq, ng = 60, 3000
    dist = (np.round(rng.random((nq, ng)) * 4000) / 4000).astype(np.float32)
    qp, gp = rng.integers(0, 40, nq), rng.integers(0, 40, ng)
    qc, gc = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    dist[:, :5] = dist[:, 5:10]                                  # ties at the top ranks too
    redone = []
    real = metrics._argsort_metrics
    monkeypatch.setattr(metrics, "_argsort_metrics", lambda d, *a: redone.append(len(d)) or real(d, *a))
    cmc, mAP, mINP, _ = evaluate_all(dist, qp, gp, qc, gc)
    ref_cmc, ref_map, ref_inp = official.eval_func(dist, qp, gp, qc, gc)
    assert np.array_equal(cmc, ref_cmc)
    assert abs(mAP - ref_map) <= metrics.TIE_TOLERANCE and abs(mINP - ref_inp) <= metrics.TIE_TOLERANCE
    assert 0 < sum(redone) < nq                                  # some ties resolved, some left open
    monkeypatch.setattr(metrics, "TIE_TOLERANCE", 0.0)           # no tolerance: every tied query is redone
    redone.clear()
    cmc, mAP, mINP, _ = evaluate_all(dist, qp, gp, qc, gc)
    assert np.array_equal(cmc, ref_cmc) and mAP == pytest.approx(ref_map, rel=1e-12)
    assert sum(redone) > 0
