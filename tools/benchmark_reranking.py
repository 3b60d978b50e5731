"""Time k-reciprocal re-ranking at a given size (default: RGBNT100, 1,715 queries x 8,575 gallery, 512-d).

    python tools/benchmark_reranking.py [--num-query 1715] [--num-gallery 8575] [--dim 512] [--device cpu]

Prints one JSON line per figure.
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-query", type=int, default=1715)
    p.add_argument("--num-gallery", type=int, default=8575)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ids", type=int, default=50, help="identities the random features cluster around")
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(a.ids, a.dim, generator=g)
    q = centers[torch.randint(0, a.ids, (a.num_query,), generator=g)] + 0.7 * torch.randn(a.num_query, a.dim, generator=g)
    gal = centers[torch.randint(0, a.ids, (a.num_gallery,), generator=g)] + 0.7 * torch.randn(a.num_gallery, a.dim, generator=g)
    q, gal = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(gal, dim=1)
    device = torch.device(a.device)
    re_ranking(q[:64], gal[:256], a.k1, a.k2, a.lambda_value, device=device)  # warm-up
    times = []
    for _ in range(a.repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        re_ranking(q, gal, a.k1, a.k2, a.lambda_value, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    base = {"num_query": a.num_query, "num_gallery": a.num_gallery, "dim": a.dim, "device": str(device),
            "threads": torch.get_num_threads()}
    print(json.dumps({"figure": "re_ranking_seconds_best", "value": round(min(times), 3), **base}))
    print(json.dumps({"figure": "re_ranking_seconds_mean", "value": round(sum(times) / len(times), 3), **base}))


if __name__ == "__main__":
    run_cli(main)
