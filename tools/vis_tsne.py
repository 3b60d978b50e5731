"""t-SNE pictures of the test set (scikit-learn's TSNE; pip install -r requirements-extras.txt):

* ``<output>``: the evaluation features of the first ``--num-ids`` test identities, coloured by identity;
* ``<output stem>_modalities.png``: the three modalities' class tokens of the same samples, coloured by
  identity with one marker per modality (circle RGB, square NI, triangle TI). The closer the three markers
  of an identity, the better the modalities are aligned (GAM's purpose).

    python tools/vis_tsne.py --config_file configs/Synthetic/demo.yml --weight output/demo/best.pth \\
        --output docs/tsne.png

Also prints the mean cosine similarity of the class tokens of two modalities of the same sample, against
that of two samples of different identities.
"""
import itertools
import os

import numpy as np
import torch
import torch.nn.functional as F
from common import batch_of, load_everything, save, to_numpy, tool_parser
from engine.setup import UsageError, run_cli  # noqa: E402
from plotting import distinct_colors, scatter


MARKERS = {"RGB": "o", "NI": "s", "TI": "^"}  # other modalities take these in turn


def tsne(x, seed, perplexity):
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise UsageError("vis_tsne.py needs scikit-learn: pip install -r requirements-extras.txt") from None
    perplexity = min(perplexity, (len(x) - 1) / 3)
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)


def main():
    p = tool_parser(__doc__)
    p.add_argument("--num-ids", type=int, default=12, help="test identities to draw (the first ones by id)")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_intermixed_args()
    cfg, model, loader, nq, device = load_everything(args)
    samples = loader.dataset.samples
    ids = sorted({s.pid for s in samples})[: args.num_ids]
    idx = [i for i, s in enumerate(samples) if s.pid in ids]
    feats, tokens = [], []
    with torch.no_grad():
        for start in range(0, len(idx), cfg.TEST.IMS_PER_BATCH):
            images, cams = batch_of(loader, idx[start:start + cfg.TEST.IMS_PER_BATCH], device)
            feats.append(to_numpy(model(images, cam_label=cams)))
            tokens.append(to_numpy(model.encode(images, cams)[0]))       # [B, 3, D]
    feats, tokens = np.concatenate(feats), np.concatenate(tokens)
    pids = np.array([samples[i].pid for i in idx])
    palette = dict(zip(ids, distinct_colors(len(ids))))
    colors = [palette[p] for p in pids]
    xy = tsne(feats, args.seed, args.perplexity)
    legend = [(f"id {p}", palette[p], "o") for p in ids[:24]]
    save(scatter(xy.tolist(), colors, f"t-SNE of test features ({len(idx)} samples, {len(ids)} identities)",
                 legend=legend), args.output)
    flat = tokens.reshape(-1, tokens.shape[-1])                      # sample-major: RGB, NI, TI per sample
    xy = tsne(flat, args.seed, args.perplexity)
    mods = model.modalities
    spare = itertools.cycle(MARKERS.values())
    marker = {m: MARKERS.get(m) or next(spare) for m in mods}
    legend = [(m, (90, 90, 90), marker[m]) for m in mods] + legend[:20]
    img = scatter(xy.tolist(), [c for c in colors for _ in mods],
                  f"t-SNE of the class tokens per modality ({len(idx)} samples x {len(mods)})",
                  markers=[marker[m] for _ in idx for m in mods], legend=legend)
    stem, ext = os.path.splitext(args.output)
    save(img, f"{stem}_modalities{ext or '.png'}")
    t = F.normalize(torch.from_numpy(tokens), dim=-1)
    pairs = [(a, b) for b in range(len(mods)) for a in range(b)] or [(0, 0)]
    same = np.mean([(t[:, a] * t[:, b]).sum(-1).mean().item() for a, b in pairs])
    other = (t[:, pairs[0][0]] @ t[:, pairs[0][1]].T)[torch.from_numpy(pids[:, None] != pids[None])].mean().item()
    print(f"class-token cosine similarity across modalities: same sample {same:.3f}, "
          f"different identities {other:.3f}")


if __name__ == "__main__":
    run_cli(main)
