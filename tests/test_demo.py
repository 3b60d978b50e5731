"""DeMo (AAAI 2025) as a method of this engine, proven equal to the official code: ``reference/demo.py``, a
transcription of github.com/924973292/DeMo @ b4f323a verified against the official modules, run on the same
random official-layout checkpoint loaded through DeMo's converter and this project's weight loading.

The official code encodes the three modalities in three backbone calls; ours stacks them into one batch: the
features, losses and gradients below agree within float tolerance all the same. HDM's attention dropout is
active in training in both: each training forward is seeded, and both draw the same masks.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import modeling.methods.demo  # noqa: F401  (registered with modeling.methods; imported for clarity)
from config import load_config
from engine import apply_missing, train_step
from modeling import build_loss, build_model, load_eval_model, load_weights
from modeling.methods import methods_recognizing
from modeling.methods.demo.checkpoint import official_entries, to_official_state
from modeling.weights import WeightsError, model_sizes
from reference import demo as ref
from solver import build_optimizer, build_scheduler
from utils.versions import torch_version

from .conftest import ROOT, TINY
from .helpers import python_commands, result_file

WIDTH, DEPTH, HEADS, PATCH, OUT = 32, 2, 2, 8, 64
CLASSES, CAMS = 5, 3
# official switches (reference names) of the checked model variants; size = input H x W
CASES = {
    "RGBNT201": dict(direct=1, hdm=True, atm=True, global_local=True, moe_head=4, size=(32, 16)),
    "vehicles": dict(direct=0, hdm=True, atm=True, global_local=True, moe_head=8, size=(16, 32)),
    "HDM_only": dict(direct=1, hdm=True, atm=False, global_local=False, moe_head=4, size=(32, 16)),
    "PIFE_only": dict(direct=0, hdm=False, atm=False, global_local=True, moe_head=4, size=(32, 16)),
}
MISS = ["", "r", "n", "t", "rn", "rt", "nt"]


def switches(case):
    return {k: v for k, v in CASES[case].items() if k != "size"}


def demo_opts(case):
    c = CASES[case]
    size = str(list(c["size"]))
    return ["MODEL.METHOD", "DeMo", "MODEL.CUSTOM_VIT.EMBED_DIM", str(WIDTH), "MODEL.CUSTOM_VIT.DEPTH", str(DEPTH),
            "MODEL.CUSTOM_VIT.NUM_HEADS", str(HEADS), "MODEL.CUSTOM_VIT.OUT_DIM", str(OUT),
            "MODEL.CUSTOM_VIT.PATCH_SIZE", str(PATCH), "INPUT.SIZE_TRAIN", size, "INPUT.SIZE_TEST", size,
            "MODEL.DIRECT", str(c["direct"]), "MODEL.DEMO.HDM", str(c["hdm"]), "MODEL.DEMO.ATM", str(c["atm"]),
            "MODEL.DEMO.GLOBAL_LOCAL", str(c["global_local"]),
            "MODEL.HEAD", str(c["moe_head"])]  # the official flat name of MODEL.DEMO.HEAD (an alias)


def official_state(case, seed=0):
    c = CASES[case]
    return ref.random_official_state(CLASSES, CAMS, WIDTH, DEPTH, PATCH, OUT, c["size"], seed=seed, **switches(case))


@pytest.fixture
def loaded(tiny_cfg, tmp_path):
    """(config, our model loaded from a random official checkpoint file, that state dict) of a case."""
    def make(case):
        cfg = tiny_cfg(*demo_opts(case))
        state = official_state(case)
        path = str(tmp_path / f"DeMo_{case}.pth")
        torch.save(state, path)
        model = load_weights(build_model(cfg, CLASSES, CAMS), path)
        return cfg, model, state
    return make


def batch(case, P=2, K=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = P * K
    return {**{m: torch.randn(n, 3, *CASES[case]["size"], generator=g) for m in ref.MODALITIES},
            "pid": torch.arange(P).repeat_interleave(K), "camid": torch.randint(0, CAMS, (n,), generator=g)}


def assert_close(a, b, what, rtol=1e-5, atol=1e-6):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{what}: differs by {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("case", CASES)
def test_the_official_layout_is_recognised_sized_and_converted_both_ways(loaded, case):
    cfg, model, state = loaded(case)
    fusion = CASES[case]["hdm"]
    assert ("DeMo" in methods_recognizing(state)) == fusion  # without HDM only MODEL.METHOD names it
    assert model_sizes(state, "DeMo_best.pth", "DeMo") == (CLASSES, CAMS)
    if fusion:
        assert model_sizes(state, "DeMo_best.pth") == (CLASSES, CAMS)
        assert "DeMo" in methods_recognizing(model.state_dict())
    back = to_official_state(model.state_dict())
    assert set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k].to(v.dtype), v), k


@pytest.mark.parametrize("case", CASES)
def test_eval_features_equal_the_official_for_every_miss_setting(loaded, case):
    """Every TEST.MISS value (the engine zeroes those modalities' images; the official model does it itself)
    and every official return_pattern, L2-normalised as the official evaluator does; a batch of one too
    (the official HDM outputs are squeezed to 1-D there and unsqueezed back)."""
    cfg, model, state = loaded(case)
    model.eval()
    b = batch(case)
    x, cams = {m: b[m] for m in ref.MODALITIES}, b["camid"]
    width = len(ref.MODALITIES) * OUT  # the official return_pattern 3 is [ori (3 x D), moe]: 1 and 2 are its parts
    parts = {3: slice(None), 1: slice(0, width), 2: slice(width, None)} if CASES[case]["hdm"] else {1: slice(None)}
    with torch.no_grad():
        for miss in MISS:
            official = ref.eval_features(state, x, cams, HEADS, miss=miss or "nothing", return_pattern=max(parts),
                                         **switches(case))
            for p, part in parts.items():
                if p != max(parts) and miss not in ("", "rt"):
                    continue
                if miss == "" and p != max(parts):
                    assert torch.equal(official[:, part], ref.eval_features(state, x, cams, HEADS, return_pattern=p,
                                                                            **switches(case)))
                model.return_pattern = p
                ours = model(apply_missing(x, miss), cam_label=cams)
                assert ours.shape == (6, model.feat_dim)
                assert_close(ours, F.normalize(official[:, part], dim=1), f"pattern {p}, TEST.MISS {miss!r}")
        model.return_pattern = max(parts)
        one = {m: v[:1] for m, v in x.items()}
        official = ref.eval_features(state, one, cams[:1], HEADS, return_pattern=3, **switches(case))
        assert_close(model(one, cam_label=cams[:1]), F.normalize(official, dim=1), "batch of one")


def official_head_name(name):
    return "ori" if name == "global" else name


@pytest.mark.parametrize("case", CASES)
def test_training_outputs_losses_gradients_and_a_step_equal_the_official(loaded, case):
    """Training forward (every head's logits and feature), every loss term, every gradient, then one step of
    this project's optimizer and schedule (solver.build_optimizer / build_scheduler at epoch 1, engine
    train_step) against the official Adam with one group per tensor; fp32 on the CPU, where the official
    autocast and GradScaler are inactive."""
    cfg, model, state = loaded(case)
    model.train()
    loss_fn = build_loss(cfg)
    official = ref.OfficialTraining(state, HEADS, transformer_type=cfg.MODEL.TRANSFORMER_TYPE,
                                    base_lr=cfg.SOLVER.BASE_LR, max_epochs=cfg.SOLVER.MAX_EPOCHS,
                                    warmup=cfg.SOLVER.WARMUP_ITERS, **switches(case))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scheduler.step(1)
    official.set_epoch(1)
    b = batch(case)
    x, cams, pid = {m: b[m] for m in ref.MODALITIES}, b["camid"], b["pid"]

    # forward: the official flat tuple, by name
    torch.manual_seed(11)
    out = model(x, cam_label=cams)
    torch.manual_seed(11)
    theirs = dict(zip(ref.output_names(**switches(case)), official.outputs(b)))
    assert set(out) == {"heads"}
    for name, head in out["heads"].items():
        o = official_head_name(name)
        assert_close(head["feat"], theirs[f"feat_{o}"], f"feature of head {name}")
        assert_close(head["score"], theirs[f"score_{o}"], f"logits of head {name}")
    assert len(theirs) == 2 * len(out["heads"]) + (1 if CASES[case]["hdm"] else 0)

    # a step: loss terms, gradients, the update, BatchNorm statistics
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(12)
    losses = train_step(model, b, loss_fn, optimizer, torch.device("cpu"), "none")
    torch.manual_seed(12)
    terms = official.loss_terms(b)
    assert float(terms.pop("moe_reg", 0.0)) == 0.0  # the official MoE regulariser: weight 0
    assert set(losses) == {f"{kind}_{h}" for h in out["heads"] for kind in ("id", "tri")}
    for name, term in losses.items():
        kind, head = name.split("_", 1)
        assert_close(term, terms[f"{kind}_{official_head_name(head)}"], name)
    total = ref.total(terms)
    assert_close(sum(losses.values()), total, "total loss")
    official.optimizer.zero_grad()
    total.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []  # every parameter receives a gradient
    grads = to_official_state({n: p.grad for n, p in trainable.items()})
    assert set(grads) == set(official.trainable)
    params = official.params
    scale = max(params[k].grad.abs().max() for k in grads)  # float noise of exactly-zero gradients scales with it
    for k, g in grads.items():
        g_ref = params[k].grad
        err = (g - g_ref).abs().max()
        assert err <= 1e-4 * g_ref.abs().max() + 1e-5 * scale, f"gradient of {k} differs by {err:.3g}"
        # the step is compared from identical gradients: where the exact gradient is 0, Adam would turn float
        # noise into a full-size update of either sign (reference/demo.py, QUIRK 12)
        params[k].grad = g.clone()
    official.optimizer.step()
    lr_of = dict(zip(official.trainable, (g["lr"] for g in official.optimizer.param_groups)))
    after = to_official_state({n: p.detach() for n, p in trainable.items()})
    moved = to_official_state({n: (p.detach() - before[n]).abs() for n, p in trainable.items()})
    for k, v in after.items():
        assert moved[k].max() > 0.1 * lr_of[k], f"{k} did not move"
        assert_close(v, params[k], f"{k} after the step", rtol=1e-6, atol=1e-9)
    grid = tuple(trainable["atm.expert_weight"].shape[:2]) if model.atm is not None else None
    buffers = to_official_state({n: b.detach() for n, b in model.named_buffers()}, grid)
    for k, v in buffers.items():
        if k.endswith(("running_mean", "running_var")):
            assert_close(v, params[k], f"{k} after two forwards", rtol=1e-5, atol=1e-7)


# (benchmark, training identities, cameras)
RECIPES = [("RGBNT201", 171, 4), ("RGBNT100", 50, 8), ("MSVR310", 155, 8)]


@pytest.mark.parametrize("name,num_classes,num_cameras", RECIPES, ids=[r[0] for r in RECIPES])
def test_every_parameter_follows_the_official_recipe_every_epoch(name, num_classes, num_cameras):
    """configs/<benchmark>/DeMo.yml holds the official recipe, and the full-size model's every trainable tensor
    gets the official LR and weight decay at every epoch (official make_optimizer + create_scheduler)."""
    cfg = load_config(os.path.join(ROOT, "configs", name, "DeMo.yml"), ["MODEL.PRETRAIN_PATH", ""])
    r, m, s = ref.RECIPES[name], cfg.MODEL, cfg.SOLVER
    assert (m.DIRECT, m.DEMO.HDM, m.DEMO.ATM, m.DEMO.GLOBAL_LOCAL, m.DEMO.HEAD, m.SIE_COE, m.ID_LOSS_WEIGHT,
            m.TRIPLET_LOSS_WEIGHT) == (r["direct"], r["hdm"], r["atm"], r["global_local"], r["moe_head"],
                                       r["sie_coe"], r["id_w"], r["tri_w"])
    assert (s.BASE_LR, s.MAX_EPOCHS, s.WARMUP_ITERS, s.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE,
            tuple(cfg.INPUT.SIZE_TRAIN)) == (r["base_lr"], r["max_epochs"], r["warmup"], r["ims_per_batch"],
                                            r["num_instance"], r["size"])
    assert m.TRANSFORMER_TYPE == "ViT-B-16" and m.SIE_CAMERA and s.OPTIMIZER_NAME == "Adam"
    assert m.DEMO.RETURN_PATTERN == 3 and not cfg.TEST.MISS  # the official test: [ori, moe], full modality
    with torch.device("meta"):  # shapes only
        model = build_model(cfg, num_classes, num_cameras)
    assert model.feat_dim == 10 * 512
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grid = tuple(trainable["atm.expert_weight"].shape[:2])
    names = {n: [k for k, _ in official_entries(n, p, grid)] for n, p in trainable.items()}
    # the official model's trainable tensors (names do not depend on the widths: a narrow copy)
    keys = ref.optimizer_keys(ref.random_official_state(num_classes, num_cameras, 64, 12, 16, 64, r["size"],
                                                        direct=r["direct"], moe_head=r["moe_head"]))
    assert sorted(k for ks in names.values() for k in ks) == sorted(keys)
    rules = {n: {ref.param_lr_wd(k, s.BASE_LR) for k in ks} for n, ks in names.items()}
    assert all(len(v) == 1 for v in rules.values())  # a stacked tensor's experts share one rule
    rules = {n: v.pop() for n, v in rules.items()}
    assert rules["backbone.vit.blocks.0.attn.qkv.bias"] == (5e-6, 1e-4) and rules["backbone.cam_embed"][0] == s.BASE_LR
    assert rules["atm.expert_bias"][0] == 2 * s.BASE_LR
    official_lr = {}
    for epoch in range(1, s.MAX_EPOCHS + 1):
        scheduler.step(epoch)
        for n, p in trainable.items():
            g, (lr, wd) = group_of[id(p)], rules[n]
            if (lr, epoch) not in official_lr:
                official_lr[lr, epoch] = ref.demo_lr(lr, epoch, s.BASE_LR, s.MAX_EPOCHS, s.WARMUP_ITERS)
            assert g["lr"] == pytest.approx(official_lr[lr, epoch], rel=1e-9, abs=0), f"{n} epoch {epoch}"
            assert g["weight_decay"] == wd, f"{n} epoch {epoch}"


def test_switches_refused_by_name(tiny_cfg):
    with pytest.raises(ValueError, match=r"MODEL.DEMO.ATM \(MODEL.ATM\) yes needs MODEL.DEMO.HDM"):
        build_model(tiny_cfg(*demo_opts("RGBNT201"), "MODEL.HDM", "no"), CLASSES, CAMS)
    with pytest.raises(ValueError, match=r"MODEL.DEMO.HEAD \(MODEL.HEAD\) must divide the token width 64.*got 5"):
        build_model(tiny_cfg(*demo_opts("RGBNT201"), "MODEL.DEMO.HEAD", "5"), CLASSES, CAMS)
    with pytest.raises(ValueError, match=r"MODEL.DEMO.RETURN_PATTERN.* must be one of \[1, 2, 3\], got 4"):
        tiny_cfg(*demo_opts("RGBNT201"), "MODEL.DEMO.RETURN_PATTERN", "4")


def test_another_methods_checkpoint_is_refused_naming_both(tiny_cfg, tmp_path):
    from reference.official import official_state_dict
    wide = ["MODEL.CUSTOM_VIT.OUT_DIM", str(OUT)]  # at the tiny tests' 64 x 32 input
    demo_cfg, signal_cfg = tiny_cfg("MODEL.METHOD", "DeMo", *wide), tiny_cfg(*wide)
    signal = build_model(signal_cfg, CLASSES, CAMS)
    released = str(tmp_path / "Signal_model.pth")  # the authors' Signal layout, no meta
    torch.save(official_state_dict(signal), released)
    with pytest.raises(WeightsError, match=r"Signal_model.pth holds the keys of a Signal model, but MODEL.METHOD is "
                                           r"'DeMo': set MODEL.METHOD Signal"):
        load_eval_model(demo_cfg, released)
    ours = str(tmp_path / "signal_run.pth")  # a checkpoint of this project: its meta names the method
    torch.save({"model": signal.state_dict(), "meta": {"method": "Signal", "num_classes": CLASSES,
                                                       "num_cameras": CAMS}}, ours)
    with pytest.raises(WeightsError, match=r"checkpoint of the method 'Signal', but MODEL.METHOD is 'DeMo'"):
        load_eval_model(demo_cfg, ours)
    demo = str(tmp_path / "demo_run.pth")
    torch.save({"model": build_model(demo_cfg, CLASSES, CAMS).state_dict(),
                "meta": {"method": "DeMo", "num_classes": CLASSES, "num_cameras": CAMS}}, demo)
    with pytest.raises(WeightsError, match=r"checkpoint of the method 'DeMo', but MODEL.METHOD is 'Signal'"):
        load_eval_model(signal_cfg, demo)
    official = str(tmp_path / "DeMobest.pth")  # the official DeMo layout under Signal: refused, naming DeMo
    torch.save(official_state("RGBNT201"), official)
    with pytest.raises(WeightsError, match=r"DeMobest.pth holds the keys of a DeMo model, but MODEL.METHOD is "
                                           r"'Signal': set MODEL.METHOD DeMo"):
        load_eval_model(signal_cfg, official)


def test_train_then_test_on_the_synthetic_benchmark(synth_root, tmp_path):
    """train.py and test.py with configs/Synthetic/DeMo_small.yml (shrunk to the tests' tiny sizes), then test.py on
    the official layout of the same sizes, and refusals by name: the run's checkpoint under Signal, a model key
    changed against the trained value. RETURN_PATTERN is a test setting: any value evaluates the checkpoint."""
    out = tmp_path / "run"
    opts = [*TINY, "MODEL.CUSTOM_VIT.OUT_DIM", str(OUT), "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(out),
            "SOLVER.MAX_EPOCHS", "1", "TEST.EVAL_BEFORE_TRAIN", "no", "LOG.PROGRESS_BARS", "no"]
    config = os.path.join(ROOT, "configs", "Synthetic", "DeMo_small.yml")
    best = out / "best.pth"
    official = tmp_path / "DeMobest.pth"
    torch.save(ref.random_official_state(6, 3, 32, 2, 8, OUT, (64, 32), seed=3, direct=1, moe_head=4), official)
    run = lambda script, *extra: [os.path.join(ROOT, script), "--config_file", config, *opts, *extra]  # noqa: E731
    errors, printed = python_commands(
        (run("train.py"), 0),
        (run("test.py", "TEST.WEIGHT", best), 0),
        (run("test.py", "TEST.WEIGHT", best, "MODEL.DEMO.RETURN_PATTERN", "1"), 0),
        (run("test.py", "TEST.WEIGHT", best, "MODEL.METHOD", "Signal"), 2),
        (run("test.py", "TEST.WEIGHT", best, "MODEL.HDM", "no", "MODEL.ATM", "no"), 2),
        (run("test.py", "TEST.WEIGHT", official, "OUTPUT_DIR", str(tmp_path / "official")), 0),
        # the tools on a DeMo run: its modules' cost, any-to-any missing modalities, one line where a tool
        # draws what DeMo has not
        ([os.path.join(ROOT, "tools", "model_cost.py"), "--config_file", config, *opts], 0),
        (run("test.py", "TEST.WEIGHT", best, "TEST.MISS", "any"), 0),
        ([os.path.join(ROOT, "tools", "vis_tokens.py"), "--config_file", config, *opts, "--weight", best], 2),
        # the memory planner needs torch >= 2.3 (fake CUDA tensors) and says so in one line before it
        ([os.path.join(ROOT, "tools", "gpu_memory.py"), "--config_file", config, *opts, "--batch", "8"],
         0 if torch_version() >= (2, 3) else 2),
        cwd=ROOT)
    log = open(out / "train_log.txt").read()
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert "test feature 640-d" in log
    assert {"id_moe", "tri_moe", "id_global", "tri_global", "mAP"} <= set(records[-1])
    meta = torch.load(best, map_location="cpu", weights_only=False)["meta"]
    assert meta["method"] == "DeMo" and meta["num_classes"] == 6
    assert "MODEL.METHOD 'DeMo'" in errors[3] and "'Signal'" in errors[3]
    assert "MODEL.DEMO.HDM True" in errors[4]
    assert any(name.endswith(".json") for name in os.listdir(tmp_path / "official"))
    assert "| HDM |" in printed and "| ATM |" in printed and "| PIFE |" in printed
    assert '"figure": "peak_gib"' in printed if torch_version() >= (2, 3) else "needs torch >= 2.3" in errors[9]
    assert errors[8].strip() == "error: vis_tokens.py draws Signal's SIM token selection; MODEL.METHOD DeMo has no SIM"
    table = json.load(open(result_file(str(out), "test_best_Synthetic_miss-any")))
    assert table["missing_rule"] == "missing modalities' inputs zero-filled" and len(table["table"]) == 7
