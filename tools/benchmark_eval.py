"""Evaluation speed side by side at every feature quality: distances + CMC / mAP (/ mINP) of the official
evaluation against ours (utils.metrics), on the same features, with the results compared.

Default size: RGBNT100 (1,715 queries x 8,575 gallery, 3,072-d Signal features, 50 identities, 8 cameras).
Three named feature regimes (unit-norm features; the noise is per dimension, relative to unit centres):

    trained    50 identity centres + noise 4/sqrt(d): mAP about 0.8, a trained model
    weak       50 identity centres + noise 5/sqrt(d): mAP about 0.4, a weak model
    untrained  random features: mAP about 0.02, an untrained model (epoch 0, cross-dataset)

The official path is timed twice when the authors' repository is given: their own ``euclidean_distance``
and ``eval_func`` (read from ``--official-repo``'s ``utils/metrics.py``; only those two functions are taken,
as the module itself imports plotting packages), and this project's transcription of them
(``reference/official.py``), so the transcription's speed can be checked against the real thing.

    python tools/benchmark_eval.py [--regime trained,weak,untrained] [--official-repo PATH] [--repeat 3]
    python tools/benchmark_eval.py --noise 4.5                   # one custom regime
    python tools/benchmark_eval.py --num-query 10000 --num-gallery 50000 --skip-official --regime trained

Results must agree: identical CMC, mAP (and mINP, which the official code does not compute; our
transcription adds it) within 1e-6, else the tool stops with both values. Prints one JSON line per
figure (best of --repeat runs, the sides in turn, seconds), then one table, and the peak memory of the process.
"""
import argparse
import ast
import json
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from engine.setup import UsageError, run_cli  # noqa: E402
from data.datasets import evaluation_reference  # noqa: E402
from utils.metrics import evaluate_all  # noqa: E402
from benchmark_reranking import timed  # noqa: E402

# Named feature regimes: noise per dimension (times 1/sqrt(d)) around unit identity centres; None: random.
REGIMES = {"trained": 4.0, "weak": 5.0, "untrained": None}
# Agreement required between two evaluations of the same features (summation order differs by CPU).
TOLERANCE = 1e-6


def features(nq, ng, dim, ids, cams, noise=REGIMES["trained"], seed=0):
    """Unit features of ``ids`` identities: unit centres plus Gaussian noise of ``noise / sqrt(dim)`` per
    dimension (``noise`` None: random features, no identity structure), with labels and cameras.
    -> (qf, gf, q_pids, g_pids, q_camids, g_camids)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(ids, dim, generator=g), dim=1)
    pids = torch.randint(0, ids, (nq + ng,), generator=g)
    if noise is None:
        x = torch.randn(nq + ng, dim, generator=g)
    else:
        x = centres[pids] + noise / dim ** 0.5 * torch.randn(nq + ng, dim, generator=g)
    feats = torch.nn.functional.normalize(x, dim=1)
    camids = torch.randint(0, cams, (nq + ng,), generator=g).numpy()
    return feats[:nq], feats[nq:], pids[:nq].numpy(), pids[nq:].numpy(), camids[:nq], camids[nq:]


def official_functions(repo):
    """``(euclidean_distance, eval_func)`` from the authors' ``utils/metrics.py`` in ``repo`` (a checkout, or
    a git directory whose HEAD is read). Only those two function definitions are executed, with ``np`` and
    ``torch`` in scope: the module's own imports (sklearn, seaborn, matplotlib, an old scipy) are not
    needed by them."""
    path = os.path.join(repo, "utils", "metrics.py")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            source = f.read()
    else:
        r = subprocess.run(["git", "--git-dir" if not os.path.isdir(os.path.join(repo, ".git")) else "-C", repo,
                            "show", "HEAD:utils/metrics.py"], capture_output=True, text=True)
        if r.returncode:
            raise UsageError(f"--official-repo {repo}: no utils/metrics.py there (nor in its git HEAD): "
                             f"{r.stderr.strip()}")
        source = r.stdout
    wanted = ("euclidean_distance", "eval_func")
    defs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    missing = set(wanted) - {n.name for n in defs}
    if missing:
        raise UsageError(f"--official-repo {repo}: utils/metrics.py defines no {', '.join(sorted(missing))}")
    scope = {"np": np, "torch": torch}
    exec(compile(ast.Module(body=defs, type_ignores=[]), os.path.join(repo, "utils", "metrics.py"), "exec"), scope)
    return scope["euclidean_distance"], scope["eval_func"]


def interleaved(fns, repeat):
    """{name: (fastest of ``repeat`` runs in seconds, result)} of ``fns`` ({name: callable}), run in turn
    within each repetition, so a change of machine speed during the benchmark reaches every side alike."""
    times, results = {name: [] for name in fns}, {}
    for _ in range(repeat):
        for name, fn in fns.items():
            t, results[name] = timed(fn, 1, torch.device("cpu"))
            times[name] += t
    return {name: (min(times[name]), results[name]) for name in fns}


def agree(ours, theirs, name):
    """Identical CMC (over the official length) and mAP / mINP within TOLERANCE, else stop naming both."""
    cmc, mAP, mINP = ours
    ref_cmc, ref_map, ref_inp = (tuple(theirs) + (None,))[:3]
    n = min(len(cmc), len(ref_cmc))
    same = bool(np.array_equal(np.asarray(cmc)[:n], np.asarray(ref_cmc)[:n]) and abs(mAP - ref_map) <= TOLERANCE
                and (ref_inp is None or abs(mINP - ref_inp) <= TOLERANCE))
    if not same:
        raise SystemExit(f"results differ from {name}: ours mAP {mAP} R1 {cmc[0]} mINP {mINP}, {name} mAP "
                         f"{ref_map} R1 {ref_cmc[0]} mINP {ref_inp}")
    return same


def compare(qf, gf, qp, gp, qc, gc, repeat, official=True, own=None):
    """Time ours, and unless ``official`` is False the transcription of the official path and, with ``own``
    (``official_functions``), the authors' own functions, each best of ``repeat``, on the same features.
    -> dict of seconds (``ours``, ``official``, ``official_own``), ``identical`` and the metrics. The sides
    run in turn within each repetition (``interleaved``)."""
    fns = {"ours": lambda: evaluate_all(None, qp, gp, qc, gc, q_feats=qf, g_feats=gf)}
    if official:
        from reference import official as ref
        fns["official"] = lambda: ref.eval_func(ref.euclidean_distance(qf, gf), qp, gp, qc, gc)
    if own is not None:
        distance, eval_func = own
        fns["official_own"] = lambda: eval_func(distance(qf, gf), qp, gp, qc, gc)
    runs = interleaved(fns, repeat)
    t_ours, (cmc, mAP, mINP, _) = runs.pop("ours")
    out = {"ours": t_ours, "mAP": mAP, "Rank-1": float(cmc[0]), "mINP": mINP, "identical": True}
    names = {"official": "the official transcription", "official_own": "the authors' eval_func"}
    for key, (seconds, theirs) in runs.items():
        out[key] = seconds
        out["identical"] = out["identical"] and agree((cmc, mAP, mINP), theirs, names[key])
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = evaluation_reference().sizes  # the default size: the largest test split of the paper (RGBNT100)
    p.add_argument("--num-query", type=int, default=size.query)
    p.add_argument("--num-gallery", type=int, default=size.gallery)
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--ids", type=int, default=size.train_ids)
    p.add_argument("--cameras", type=int, default=size.cameras)
    p.add_argument("--regime", default=",".join(REGIMES),
                   help=f"comma-separated feature regimes: {', '.join(REGIMES)} (default: all)")
    p.add_argument("--noise", type=float, default=None, help="one custom regime: this noise (x 1/sqrt(d))")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--official-repo", default="", metavar="PATH",
                   help="the authors' repository (checkout or git directory): time their own functions too")
    p.add_argument("--skip-official", action="store_true", help="time ours only (large sizes)")
    a = p.parse_args()
    if a.noise is not None:
        regimes = [(f"noise {a.noise:g}", a.noise)]
    else:
        unknown = [r for r in a.regime.split(",") if r not in REGIMES]
        if unknown:
            raise UsageError(f"--regime: unknown {', '.join(unknown)}; choose from {', '.join(REGIMES)}")
        regimes = [(r, REGIMES[r]) for r in a.regime.split(",")]
    own = official_functions(a.official_repo) if a.official_repo and not a.skip_official else None
    base = {"num_query": a.num_query, "num_gallery": a.num_gallery, "dim": a.dim, "threads": torch.get_num_threads()}
    rows = []
    for name, noise in regimes:
        feats = features(a.num_query, a.num_gallery, a.dim, a.ids, a.cameras, noise)
        r = compare(*feats, a.repeat, official=not a.skip_official, own=own)
        tag = {"regime": name, "mAP": round(r["mAP"], 6), **base}
        print(json.dumps({"figure": "evaluation_seconds_ours", "value": round(r["ours"], 3), **tag}), flush=True)
        for key, label in (("official", "transcription"), ("official_own", "authors_code")):
            if key in r:
                print(json.dumps({"figure": f"evaluation_seconds_official_{label}", "value": round(r[key], 3),
                                  **tag}))
                print(json.dumps({"figure": f"evaluation_speedup_vs_official_{label}",
                                  "value": round(r[key] / r["ours"], 2), "identical_results": r["identical"],
                                  "Rank-1": round(r["Rank-1"], 6), "mINP": round(r["mINP"], 6), **tag}),
                      flush=True)
        rows.append((name, r))
    print(f"\n{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, NumPy {np.__version__}; "
          f"{a.num_query} x {a.num_gallery}, {a.dim}-d, best of {a.repeat}\n")
    own_col = own is not None
    print("| features | mAP | official" + (" (authors' code) | official (transcription)" if own_col else "")
          + " | ours | speed-up |\n|---|---|---" + ("|---" if own_col else "") + "|---|---|")
    for name, r in rows:
        ref = r.get("official_own", r.get("official"))
        cells = [name, f"{r['mAP']:.2f}"]
        if own_col:
            cells += [f"{r['official_own']:.2f} s", f"{r['official']:.2f} s"]
        elif "official" in r:
            cells.append(f"{r['official']:.2f} s")
        else:
            cells.append("-")
        cells += [f"{r['ours']:.2f} s", f"{ref / r['ours']:.2f}x" if ref else "-"]
        print("| " + " | ".join(cells) + " |")
    print(json.dumps({"figure": "peak_rss_gib", "value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                 / 2 ** 20, 2), **base}))


if __name__ == "__main__":
    run_cli(main)
