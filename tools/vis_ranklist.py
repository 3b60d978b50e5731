"""Rank lists: each query and its top-k gallery samples (RGB | NI | TI), true matches framed green,
false ones red; gallery samples the protocol ignores (same id and camera, or scene) are skipped.

    python tools/vis_ranklist.py --config_file configs/Synthetic/demo.yml --weight output/demo/best.pth \\
        --output docs/ranklist.png --num-query 4 --topk 5
"""
import numpy as np
from common import compose, frame, label, load_everything, sample_images, save, stack_modalities, tool_parser
from engine.setup import run_cli  # noqa: E402
from engine import evaluate_model
from data.datasets import dataset_of
from utils.metrics import pairwise_distance, removed_by_protocol


def main():
    p = tool_parser(__doc__)
    p.add_argument("--num-query", type=int, default=4)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="which queries (random draw)")
    args = p.parse_intermixed_args()
    cfg, model, loader, nq, device = load_everything(args)
    metrics, ev = evaluate_model(cfg, model, loader, nq, device, progress=False)
    feats, pids, camids, scenes = ev.arrays()
    g0 = 0 if len(feats) == nq else nq
    dist = pairwise_distance(feats[:nq], feats[g0:]).numpy()
    use_scenes = dataset_of(cfg).protocol_for(cfg) == "scene"
    rows = []
    queries = np.random.default_rng(args.seed).choice(nq, size=min(args.num_query, nq), replace=False)
    for q in sorted(queries):
        order = np.argsort(dist[q], kind="stable")
        g_p, g_c, g_s = pids[g0:][order], camids[g0:][order], scenes[g0:][order]
        q_key, g_key = (scenes[q], g_s) if use_scenes else (camids[q], g_c)
        keep = order[~removed_by_protocol(pids[q], q_key, g_p, g_key)][: args.topk]
        tiles = [label(frame(stack_modalities(sample_images(loader, q), args.scale), "black"),
                       f"query id {pids[q]} cam {camids[q]}")]
        for rank, g in enumerate(keep, 1):
            ok = pids[g0 + g] == pids[q]
            tiles.append(label(frame(stack_modalities(sample_images(loader, g0 + g), args.scale),
                                     (0, 170, 0) if ok else (220, 0, 0)), f"#{rank} id {pids[g0 + g]}"))
        rows.append(tiles)
    out = compose(rows, gap=8)
    print(f"mAP {metrics['mAP']:.1%}  Rank-1 {metrics['Rank-1']:.1%}")
    save(out, args.output)


if __name__ == "__main__":
    run_cli(main)
