"""The official recipe, reproduced: the LR and weight decay of every parameter for every epoch of the three
benchmark configs, and one training step (loss terms, then the optimizer step) from the same weights and
batch, against the transcription of the official code in ``reference/official.py``."""
import os

import pytest
import torch

from config import load_config
from engine import amp_mode, train_step
from modeling import build_loss, build_model
from solver import build_optimizer, build_scheduler
from reference import official

from .conftest import ROOT
from .test_weights import CUSTOM, HEADS

# (config, training identities, cameras) of the three benchmarks.
BENCHMARKS = [("RGBNT201", 171, 3), ("RGBNT100", 50, 8), ("MSVR310", 155, 8)]


def benchmark_cfg(name, *opts):
    return load_config(os.path.join(ROOT, "configs", name, "Signal.yml"),
                       ["MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu", *opts])


def official_lr(cfg, group_lr, epoch, noise=True):
    s = cfg.SOLVER
    if cfg.DATASETS.NAMES == "MSVR310":
        return official.multistep_lr(group_lr, epoch, s.STEPS, s.GAMMA, s.WARMUP_ITERS)
    return official.cosine_lr(group_lr, epoch, s.BASE_LR, s.MAX_EPOCHS, s.WARMUP_ITERS, noise)


def schedule_table(cfg, model, noise=True):
    """{our parameter name: [(lr, weight decay) for epoch 1..MAX_EPOCHS]} of ours and of the official code."""
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ours, ref = {n: [] for n, _ in named}, {n: [] for n, _ in named}
    rules = {n: official.param_lr_wd(official.official_name(n), cfg.SOLVER.BASE_LR, cfg.MODEL.TRANSFORMER_TYPE,
                                     cfg.DATASETS.NAMES) for n, _ in named}
    for epoch in range(1, cfg.SOLVER.MAX_EPOCHS + 1):
        scheduler.step(epoch)
        for n, p in named:
            g = group_of[id(p)]
            ours[n].append((g["lr"], g["weight_decay"]))
            lr, wd = rules[n]
            ref[n].append((official_lr(cfg, lr, epoch, noise), wd))
    return ours, ref


@pytest.mark.parametrize("name,num_classes,num_cameras", BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_every_parameter_follows_the_official_schedule(name, num_classes, num_cameras):
    cfg = benchmark_cfg(name)
    model = build_model(cfg, num_classes, num_cameras)
    ours, ref = schedule_table(cfg, model)
    assert len(ours) > 100  # every trainable tensor of the full ViT-B/16 model
    for n in ours:
        for epoch, (a, b) in enumerate(zip(ours[n], ref[n]), 1):
            assert a[0] == pytest.approx(b[0], rel=1e-9, abs=0), f"{name} {n} epoch {epoch}: lr {a[0]} vs {b[0]}"
            assert a[1] == b[1], f"{name} {n} epoch {epoch}: weight decay {a[1]} vs {b[1]}"
    # The recipe's distinctive values, read off the table.
    lrs = {n: [lr for lr, _ in v] for n, v in ours.items()}
    s = cfg.SOLVER
    if name == "MSVR310":
        cls, head = lrs["classifiers.RGB.weight"], lrs["backbone.vit.blocks.0.attn.qkv.weight"]
        assert cls[18] == cls[0] == pytest.approx(100 * s.BASE_LR)          # epochs 1-19
        assert cls[19] == pytest.approx(10 * s.BASE_LR)                    # epoch 20: first decay
        assert cls[39] == pytest.approx(s.BASE_LR)                         # epoch 40: second decay
        assert head[0] == pytest.approx(5e-6)
    else:
        factors = [official.lr_noise(e) + 1 for e in range(1, s.MAX_EPOCHS)]
        assert 0.33 < min(factors) < 0.5 and 1.5 < max(factors) < 1.67  # the noise is on, every epoch
        last = lrs["bottleneck.weight" if name == "RGBNT201" else "bottlenecks.RGB.weight"][-1]
        assert last == pytest.approx(0.001 * s.BASE_LR)                    # last epoch: floor, no noise


def test_lr_noise_switch_gives_the_noise_free_cosine():
    cfg = benchmark_cfg("RGBNT201", "SOLVER.LR_NOISE_RANGE", "[]", "MODEL.TRANSFORMER_TYPE", "vit_custom",
                        "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "MODEL.TOPK", "4",
                        "MODEL.SIM_HEADS", "2", *CUSTOM)
    model = build_model(cfg, 5, 3)
    ours, ref = schedule_table(cfg, model, noise=False)
    for n in ours:
        assert [a for a, _ in ours[n]] == pytest.approx([b for b, _ in ref[n]], rel=1e-9, abs=0)
    # Epoch 11 (first after warmup) is the cosine value itself.
    lr11 = ours["bottleneck.weight"][10][0]
    assert lr11 == pytest.approx(official.cosine_lr(cfg.SOLVER.BASE_LR, 11, cfg.SOLVER.BASE_LR, 50, 10, noise=False))


def make_batch(P, K, cameras, size, seed):
    g = torch.Generator().manual_seed(seed)
    n = P * K
    return {**{m: torch.randn(n, 3, *size, generator=g) for m in ("RGB", "NI", "TI")},
            "pid": torch.arange(P).repeat_interleave(K), "camid": torch.randint(0, cameras, (n,), generator=g)}


@pytest.mark.parametrize("name", ["RGBNT201", "MSVR310"])
def test_training_steps_equal_the_official_steps(name):
    """Two steps of the benchmark recipe (tiny backbone): every loss term, every gradient, the BatchNorm
    statistics and every parameter after the optimizer step (the official optimizer with its per-parameter
    LR and weight decay at epoch 1) equal the official loop's. fp32 on the CPU, where the official
    autocast and GradScaler are inactive."""
    torch.manual_seed(0)
    size = [128, 64] if name == "RGBNT201" else [64, 128]  # LAM grids 4x2 and 2x4, as the benchmarks
    cfg = benchmark_cfg(name, "MODEL.TRANSFORMER_TYPE", "vit_custom", *CUSTOM, "MODEL.TOPK", "5",
                        "MODEL.SIM_HEADS", "8", "INPUT.SIZE_TRAIN", str(size), "INPUT.SIZE_TEST", str(size))
    model = build_model(cfg, 4, 3).train()
    loss_fn = build_loss(cfg)
    m = cfg.MODEL
    # The official optimizer: one group per trainable tensor with the official rule (SIM's W_q / W_k / W_v
    # are trainable there but never receive a gradient, so Adam skips them).
    ref = official.OfficialTraining(model, cfg, HEADS)
    params, trainable, ref_opt, rules = ref.params, ref.trainable, ref.optimizer, ref.rules
    names = {official.official_name(n): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(names) <= set(trainable)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    epoch = 1
    scheduler.step(epoch)
    for g, k in zip(ref_opt.param_groups, trainable):
        g["lr"] = official_lr(cfg, rules[k][0], epoch)
    for step in range(2):
        batch = make_batch(2, 4, 3, size, seed=10 + step)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        losses = train_step(model, batch, loss_fn, optimizer, torch.device("cpu"), amp_mode(cfg, torch.device("cpu")))

        heads, gam, lam = ref.loss_terms(batch)
        head_names = ["global", "sim"] if m.DIRECT else ["RGB", "NI", "TI", "sim"]
        for h, (id_term, tri_term) in zip(head_names, heads):
            assert torch.allclose(losses[f"id_{h}"], id_term, rtol=1e-5, atol=1e-6), (h, losses[f"id_{h}"], id_term)
            assert torch.allclose(losses[f"tri_{h}"], tri_term, rtol=1e-5, atol=1e-6), (h, losses[f"tri_{h}"], tri_term)
        assert torch.allclose(losses["gam"], gam, rtol=1e-5, atol=1e-6)
        assert torch.allclose(losses["lam"], lam, rtol=1e-5, atol=1e-7)
        total = ref.total(heads, gam, lam)
        assert torch.allclose(sum(losses.values()), total, rtol=1e-5)

        ref_opt.zero_grad()
        total.backward()
        current = dict(model.named_parameters())
        # Float noise of an exactly-zero gradient scales with the largest gradient of the step.
        scale = max(params[off].grad.abs().max() for off in names)
        with torch.no_grad():
            for off, n in names.items():
                g_ref, g = params[off].grad, official.to_official(n, current[n].grad)
                err = (g - g_ref).abs().max()
                assert err <= 1e-4 * g_ref.abs().max() + 1e-5 * scale, f"step {step}: gradient of {n} differs by {err}"
                # The optimizer step is compared from identical gradients: Adam normalises each element by its
                # own gradient, so where the exact gradient is 0 (a bias feeding a BatchNorm, the key bias)
                # float noise would decide the sign of the update.
                params[off].grad = g.clone()
        ref_opt.step()
        with torch.no_grad():
            for off, n in names.items():
                lr = ref_opt.param_groups[trainable.index(off)]["lr"]
                got, expected = official.to_official(n, current[n]), params[off]
                moved = (got - official.to_official(n, before[n])).abs().max()
                assert moved > 0.1 * lr, f"step {step}: {n} did not move"
                assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9), \
                    f"step {step}: {n} differs by {(got - expected).abs().max()} (lr {lr})"
            for n, buf in model.named_buffers():
                if n.endswith(("running_mean", "running_var")):
                    assert torch.allclose(buf, params[official.official_name(n)], rtol=1e-5, atol=1e-7), n


@pytest.mark.parametrize("relative", [False, True])
def test_relative_warmup_starts_every_group_at_its_own_fraction(relative):
    """SOLVER.WARMUP_RELATIVE: every group rises from WARMUP_FACTOR x its own LR to it (the CLIP backbone from
    5e-7 up to 5e-6); the official warmup starts every group at WARMUP_FACTOR x BASE_LR (the backbone from
    3.5e-5 down to 5e-6). After the warmup both are the same cosine."""
    from solver import build_optimizer, build_scheduler
    cfg = benchmark_cfg("RGBNT201", "SOLVER.LR_NOISE_RANGE", "[]", "SOLVER.WARMUP_RELATIVE", "yes" if relative else "no")
    with torch.device("meta"):
        model = build_model(cfg, 5, 3)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    targets = list(scheduler.base_values)  # each group's own LR
    base, f, warm = cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_ITERS
    table = []
    for epoch in range(1, warm + 2):
        scheduler.step(epoch)
        table.append([g["lr"] for g in optimizer.param_groups])
    assert 5e-6 in targets
    for lr_g, column in zip(targets, zip(*table)):
        start = f * lr_g if relative else f * base
        expected = [start + (lr_g - start) * t / warm for t in range(1, warm)]
        assert list(column[:warm - 1]) == pytest.approx(expected, rel=1e-9)
    for epoch in (warm, warm + 1):  # the cosine of the official factory, for every group
        assert list(table[epoch - 1]) == pytest.approx(
            [official.cosine_lr(lr_g, epoch, base, cfg.SOLVER.MAX_EPOCHS, warm, noise=False) for lr_g in targets])
