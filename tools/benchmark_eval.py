"""Evaluation speed side by side: distances + CMC / mAP / mINP of the official code's path (its distance
and per-query loop, transcribed in tests/official.py) against ours (utils.metrics), on the same features,
with the results compared. Default size: RGBNT100 (1,715 queries x 8,575 gallery, 3,072-d Signal features).

    python tools/benchmark_eval.py [--num-query 1715] [--num-gallery 8575] [--dim 3072] [--repeat 3]
    python tools/benchmark_eval.py --num-query 10000 --num-gallery 50000 --skip-official

Prints one JSON line per figure (best of --repeat runs, seconds) and the peak memory of the process.
"""
import argparse
import json
import os
import resource
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from engine.setup import run_cli  # noqa: E402
from utils.metrics import evaluate_all  # noqa: E402
from benchmark_reranking import timed  # noqa: E402


def features(nq, ng, dim, ids, cams, noise=3.6, seed=0):
    """Unit features clustered around ``ids`` identities (``noise`` sets how hard: 3.6 gives mAP about 0.9
    at the default size), with labels and cameras."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(ids, dim, generator=g)
    pids = torch.randint(0, ids, (nq + ng,), generator=g)
    feats = torch.nn.functional.normalize(centers[pids] + noise * torch.randn(nq + ng, dim, generator=g), dim=1)
    camids = torch.randint(0, cams, (nq + ng,), generator=g).numpy()
    return feats[:nq], feats[nq:], pids[:nq].numpy(), pids[nq:].numpy(), camids[:nq], camids[nq:]


def best_of(fn, repeat):
    """(fastest of ``repeat`` runs of ``fn`` in seconds, its result)."""
    times, out = timed(fn, repeat, torch.device("cpu"))
    return min(times), out


def compare(qf, gf, qp, gp, qc, gc, repeat, official=True):
    """Time ours (and the official path unless ``official`` is False) on the same features, best of
    ``repeat``. -> dict with ``ours`` and, with the official path, ``official``, ``identical`` and the metrics.
    The official path's results must equal ours."""
    def ours():
        return evaluate_all(None, qp, gp, qc, gc, q_feats=qf, g_feats=gf)

    t_ours, (cmc, mAP, mINP, _) = best_of(ours, repeat)
    out = {"ours": t_ours, "mAP": mAP, "Rank-1": float(cmc[0]), "mINP": mINP}
    if official:
        from tests import official as ref

        def theirs():
            return ref.eval_func(ref.euclidean_distance(qf, gf), qp, gp, qc, gc)

        t_off, (ref_cmc, ref_map, ref_inp) = best_of(theirs, repeat)
        same = bool(np.array_equal(cmc, ref_cmc) and abs(mAP - ref_map) < 1e-12 and abs(mINP - ref_inp) < 1e-12)
        if not same:
            raise SystemExit(f"results differ: ours mAP {mAP} R1 {cmc[0]} mINP {mINP}, official mAP {ref_map} "
                             f"R1 {ref_cmc[0]} mINP {ref_inp}")
        out.update(official=t_off, identical=same)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-query", type=int, default=1715)
    p.add_argument("--num-gallery", type=int, default=8575)
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--ids", type=int, default=50)
    p.add_argument("--cameras", type=int, default=8)
    p.add_argument("--noise", type=float, default=3.6, help="feature noise around each identity's centre")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-official", action="store_true", help="time ours only (large sizes)")
    a = p.parse_args()
    qf, gf, qp, gp, qc, gc = features(a.num_query, a.num_gallery, a.dim, a.ids, a.cameras, a.noise)
    base = {"num_query": a.num_query, "num_gallery": a.num_gallery, "dim": a.dim, "threads": torch.get_num_threads()}
    r = compare(qf, gf, qp, gp, qc, gc, a.repeat, official=not a.skip_official)
    print(json.dumps({"figure": "evaluation_seconds_ours", "value": round(r["ours"], 3), **base}))
    if "official" in r:
        print(json.dumps({"figure": "evaluation_seconds_official", "value": round(r["official"], 3), **base}))
        print(json.dumps({"figure": "evaluation_speedup", "value": round(r["official"] / r["ours"], 2),
                          "identical_results": r["identical"], "mAP": round(r["mAP"], 6),
                          "Rank-1": round(r["Rank-1"], 6), "mINP": round(r["mINP"], 6)}))
    print(json.dumps({"figure": "peak_rss_gib", "value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                 / 2 ** 20, 2), **base}))


if __name__ == "__main__":
    run_cli(main)
