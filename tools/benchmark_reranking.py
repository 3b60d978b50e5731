"""Time k-reciprocal re-ranking at a given size (default: RGBNT100, 1,715 queries x 8,575 gallery, at the
width of Signal's ViT-B/16 test feature, 3,072-d) and report its peak memory.

    python tools/benchmark_reranking.py [--num-query 1715] [--num-gallery 8575] [--dim 3072] [--device cpu]

Prints one JSON line per figure. Peak memory: the process's peak resident set on the CPU (it includes the
features and the Python process itself), torch's peak allocation on CUDA.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.reranking import re_ranking  # noqa: E402
from engine.setup import run_cli  # noqa: E402


def clustered(num_query, num_gallery, dim, ids, seed=0):
    """Unit query and gallery features around ``ids`` identity centres."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(ids, dim, generator=g)
    q = centers[torch.randint(0, ids, (num_query,), generator=g)] + 0.7 * torch.randn(num_query, dim, generator=g)
    gal = centers[torch.randint(0, ids, (num_gallery,), generator=g)] + 0.7 * torch.randn(num_gallery, dim, generator=g)
    return torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(gal, dim=1)


def timed(fn, repeat, device):
    """-> (list of seconds, last result)."""
    times, out = [], None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times, out


def compare(q, gal, k1, k2, lam, device, repeat, official_repeat=1):
    """Ours (best of ``repeat``) and, with ``official_repeat`` > 0, the official function (best of
    ``official_repeat``, CPU) on the same features. -> dict of seconds and the largest difference of the
    re-ranked distances (the official code stores them in float16)."""
    re_ranking(q[:64], gal[:256], k1, k2, lam, device=device)  # warm-up
    times, ours = timed(lambda: re_ranking(q, gal, k1, k2, lam, device=device), repeat, device)
    out = {"ours": min(times), "ours_mean": sum(times) / len(times)}
    if official_repeat > 0:
        from reference import official
        t_off, ref = timed(lambda: official.re_ranking(q, gal, k1, k2, lam), official_repeat, torch.device("cpu"))
        out.update(official=min(t_off), max_abs_difference=float(abs(ours - ref.astype("float64")).max()))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from data.datasets import evaluation_reference
    size = evaluation_reference().sizes  # the default size: the largest test split of the paper (RGBNT100)
    p.add_argument("--num-query", type=int, default=size.query)
    p.add_argument("--num-gallery", type=int, default=size.gallery)
    p.add_argument("--dim", type=int, default=3072,
                   help="feature width (default: Signal's ViT-B/16 test feature, 3 class tokens + SIM's 3 x 512)")
    p.add_argument("--ids", type=int, default=50, help="identities the random features cluster around")
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--official", type=int, default=0, metavar="N",
                   help="also time the official code's function (reference/official.py), best of N runs")
    a = p.parse_args()
    q, gal = clustered(a.num_query, a.num_gallery, a.dim, a.ids)
    device = torch.device(a.device)
    r = compare(q, gal, a.k1, a.k2, a.lambda_value, device, a.repeat, a.official)
    base = {"num_query": a.num_query, "num_gallery": a.num_gallery, "dim": a.dim, "device": str(device),
            "threads": torch.get_num_threads()}
    print(json.dumps({"figure": "re_ranking_seconds_best", "value": round(r["ours"], 3), **base}))
    print(json.dumps({"figure": "re_ranking_seconds_mean", "value": round(r["ours_mean"], 3), **base}))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"figure": "re_ranking_peak_memory_gib", "value": round(peak / 2 ** 30, 2), **base}))
    if "official" in r:
        print(json.dumps({"figure": "re_ranking_seconds_official", "value": round(r["official"], 3), **base}))
        print(json.dumps({"figure": "re_ranking_speedup", "value": round(r["official"] / r["ours"], 2),
                          "max_abs_difference": r["max_abs_difference"]}))


if __name__ == "__main__":
    run_cli(main)
