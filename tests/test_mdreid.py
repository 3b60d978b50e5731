"""MDReID (modeling/methods/mdreid) equals the authors' code, as transcribed in reference/mdreid.py: one random
checkpoint in their layout, loaded through the method's converter with this project's loading, gives the same
evaluation features for every missing-modality setting, the same training outputs, loss terms, gradients and
optimizer step (this project's optimizer and schedule), and the recipes give every parameter the official LR
and weight decay at every epoch. Then train.py / test.py on the synthetic benchmark, and other methods'
checkpoints refused by name."""
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

from config import load_config
from engine import apply_missing, encode
from modeling import build_loss, build_model, load_eval_model, load_weights
from modeling.methods import checkpoint_meta
from modeling.weights import WeightsError
from reference import mdreid as ref
from reference import official as signal_ref
from solver import build_optimizer, build_scheduler
from utils.modalities import MODALITIES, miss_settings

from .conftest import ROOT, TINY, images
from .helpers import python_commands, result_file
from .test_weights import RefCLIP

WIDTH, DEPTH, HEADS, PATCH, OUT = 32, 2, 2, 8, 16  # the small ViT of conftest.TINY
SIZE = (64, 32)
CLASSES, CAMERAS = 5, 3
# The switches of the authors' code (their YAMLs: "recipe"), as our keys and as the reference's arguments.
RECIPE = dict(direct=0, add_share=True, add_eloss=True, add_closs=True, global_local=False)
SWITCHES = {
    "recipe": ([], RECIPE),
    # GLOBAL_LOCAL as the authors train it: the training mean token also averages the shared token
    "global_local": (["MODEL.MDREID.GLOBAL_LOCAL", "yes", "MODEL.MDREID.POOL_SHARED_IN_TRAINING", "yes"],
                     dict(RECIPE, global_local=True)),
    "direct": (["MODEL.DIRECT", "1", "MODEL.ADD_ELOSS", "no"], dict(RECIPE, direct=1, add_eloss=False)),
    "no_share": (["MODEL.ADD_SHARE", "no", "MODEL.ADD_ELOSS", "no", "MODEL.ADD_CLOSS", "no",
                  "MODEL.MDREID.GLOBAL_LOCAL", "yes"],
                 dict(RECIPE, add_share=False, add_eloss=False, add_closs=False, global_local=True)),
    # the authors' [specific ; shared] heads kept (frozen; their BN statistics move as theirs)
    "eloss_heads": (["MODEL.MDREID.ELOSS_HEADS", "yes"], RECIPE),
}
_LETTER = {"RGB": "r", "NI": "n", "TI": "t"}
_REDUCER = {"RGB": "rgb", "NI": "nir", "TI": "tir"}


def mdreid_cfg(tiny_cfg, *opts):
    # SOLVER.BACKBONE_LR 5e-6: the CLIP tower's LR of the authors' rule, so the small ViT follows the ViT-B-16 recipe
    return tiny_cfg("MODEL.METHOD", "MDReID", "MODEL.DIRECT", "0", "SOLVER.BACKBONE_LR", "5e-6", *opts)


def official_name(name):
    """The authors' key of our parameter or buffer ``name`` (``shared_pos_embed`` is the second row of their
    position embedding)."""
    if name in ("backbone.vit.pos_embed", "shared_pos_embed"):
        return ref.POS
    if name.startswith("backbone.vit."):
        return signal_ref.official_name(name).replace("clip_vision_encoder.base.", ref.TOWER)
    if name == "backbone.cam_embed":
        return ref.CAM
    for pattern, repl in ((r"^(classifier|bottleneck)s\.(\w+)\.", lambda m: f"{m[1]}_{_LETTER[m[2]]}."),
                          (r"^(classifier|bottleneck)s_eloss\.(\w+)\.", lambda m: f"{m[1]}_{_LETTER[m[2]]}s."),
                          (r"^(classifier|bottleneck)_shared\.", lambda m: f"{m[1]}_s."),
                          (r"^reducers\.(\w+)\.", lambda m: f"{_REDUCER[m[1]]}_reduce.")):
        name = re.sub(pattern, repl, name)
    return name


def official_view(model, grad=False):
    """Our model's parameters and buffers (or the parameters' gradients) in the authors' layout."""
    named = dict(model.named_parameters())
    if not grad:
        named.update(model.named_buffers())
    value = (lambda p: p.grad) if grad else (lambda p: p.detach())  # noqa: E731
    out = {}
    for n, p in named.items():
        v = value(p)
        if v is None or n == "shared_pos_embed":
            continue
        if n == "backbone.vit.pos_embed" and model.shared_pos_embed is not None:
            shared = value(model.shared_pos_embed)
            v = torch.cat([v[0, :1], shared[0], v[0, 1:]], 0)
        else:
            v = signal_ref.to_official(n, v)
        out[official_name(n)] = v
    return out


def official_model(tiny_cfg, tmp_path, name, seed=0):
    """(config, the authors' state dict, our model loaded from it through the converter) for switches ``name``."""
    opts, sw = SWITCHES[name]
    cfg = mdreid_cfg(tiny_cfg, *opts)
    state = ref.random_official_state(CLASSES, CAMERAS, WIDTH, DEPTH, PATCH, OUT, SIZE, direct=sw["direct"],
                                      add_share=sw["add_share"], add_eloss=sw["add_eloss"],
                                      global_local=sw["global_local"], seed=seed)
    path = tmp_path / "MDReIDbest.pth"
    torch.save(state, path)
    torch.manual_seed(seed)
    model = load_weights(build_model(cfg, CLASSES, CAMERAS, pretrained=False), str(path))
    return cfg, state, model


def test_the_converter_maps_every_official_tensor(tiny_cfg, tmp_path):
    """Every tensor of the authors' checkpoint lands in our model (the shared token's position row in
    shared_pos_embed, the class embedding once); their [specific ; shared] heads only where kept."""
    for name in ("recipe", "eloss_heads"):
        _, state, model = official_model(tiny_cfg, tmp_path, name)
        view = official_view(model)
        dropped = {k for k in state if k not in view}
        expected = {ref.SHARED} | ({k for k in state if re.match(r"(classifier|bottleneck)_(rs|ns|ts)\.", k)}
                                   if name == "recipe" else set())
        assert dropped == expected, name
        for k, v in view.items():
            assert torch.equal(v.float(), state[k].float()), k
    assert (model.shared_pos_embed[0, 0] == state[ref.POS][1]).all()


def test_a_clip_checkpoint_loads_as_the_official_build_model_does(tiny_cfg, tmp_path):
    """MODEL.PRETRAIN_PATH with an OpenAI CLIP state dict: the tower the authors' build_model makes of it (the
    position embedding resized, its class row duplicated for the shared token, which is the class embedding)."""
    torch.manual_seed(0)
    clip = RefCLIP().state_dict()
    torch.save(clip, tmp_path / "ViT.pth")
    model = build_model(mdreid_cfg(tiny_cfg, "MODEL.PRETRAIN_PATH", str(tmp_path / "ViT.pth")), CLASSES, CAMERAS)
    expected = ref.clip_to_official(clip, (SIZE[0] // PATCH, SIZE[1] // PATCH))
    view = official_view(model)
    assert {k for k in view if k.startswith(ref.TOWER)} == set(expected) - {ref.SHARED}
    for k, v in expected.items():
        if k != ref.SHARED:
            assert torch.allclose(view[k], v, atol=1e-6), k
    assert torch.equal(view[ref.POS][0], view[ref.POS][1])


@pytest.mark.parametrize("name", list(SWITCHES))
def test_eval_features_equal_the_official_for_every_missing_setting(tiny_cfg, tmp_path, name):
    """The evaluation feature for the full input and each of the six missing settings: with ADD_SHARE only the
    present modalities are encoded ([g ; s] of those, present_only), without it the missing ones are zeroed.
    Called as the engine would: its images zeroed by apply_missing, the absent modalities named by missing=."""
    cfg, state, model = official_model(tiny_cfg, tmp_path, name)
    sw = SWITCHES[name][1]
    model.eval()
    assert model.present_only == sw["add_share"]
    batches = [(3, torch.tensor([2, 0, 1]))] + ([(1, torch.tensor([1]))] if name == "recipe" else [])
    for b, cams in batches:  # one sample: a single camera label, as the authors' code then does not repeat it
        x = images(b, *SIZE, seed=b)
        for miss, gone in [("", ())] + list(miss_settings(MODALITIES).items()):
            expected = F.normalize(ref.eval_features(state, x, cams, HEADS, miss=miss or "nothing",
                                                     add_share=sw["add_share"], global_local=sw["global_local"]), dim=1)
            with torch.no_grad():
                ours = model(apply_missing(x, miss), cam_label=cams, missing=gone)
                width = (2 if sw["add_share"] else 1) * OUT * (3 - len(gone) if sw["add_share"] else 3)
                assert ours.shape == expected.shape == (b, width), (miss, ours.shape, expected.shape)
                assert torch.allclose(ours, expected, atol=1e-5), (name, miss, (ours - expected).abs().max())
                # the engine's evaluation (TEST.MISS, any-to-any) encodes by the model's rule
                assert torch.allclose(encode(model, x, cams, miss), expected, atol=1e-5), (name, miss)
                if name == "recipe":  # the missing images are never read
                    wild = {m: torch.full_like(v, 1e3) if m in gone else v for m, v in x.items()}
                    assert torch.allclose(model(wild, cam_label=cams, missing=gone), ours, atol=1e-6)
    assert model.feat_dim == (6 if sw["add_share"] else 3) * OUT


def make_batch(P=3, K=2, seed=7):
    g = torch.Generator().manual_seed(seed)
    n = P * K
    return {**{m: torch.randn(n, 3, *SIZE, generator=g) for m in MODALITIES},
            "pid": torch.arange(P).repeat_interleave(K), "camid": torch.randint(0, CAMERAS, (n,), generator=g)}


def _ours_output(name, outs, i_modality=None):
    """Our training output matching the reference's ``output_names`` entry ``name``."""
    heads = outs["heads"]
    if name in ("score", "feat"):
        return heads["global"][name]
    kind, _, what = name.partition("_")
    if what.endswith("+shared"):
        m = what[:-len("+shared")]
        i = MODALITIES.index(m)
        if kind == "score":
            return outs["eloss_scores"][m] if "eloss_scores" in outs else None
        return torch.cat([outs["specific"][:, i], outs["shared"][:, i]], -1)
    return heads[what][kind]


@pytest.mark.parametrize("name", list(SWITCHES))
def test_one_training_step_equals_the_official_step(tiny_cfg, tmp_path, name):
    """From the same weights and batch: every training output, the BN statistics, every loss term, the
    gradient of every parameter, then one step of this project's optimizer (solver.build_optimizer, LR of
    epoch 1 from solver.build_scheduler) against the official Adam with its per-tensor rules. fp32 on the CPU,
    where the official autocast and GradScaler are inactive."""
    cfg, state, model = official_model(tiny_cfg, tmp_path, name)
    sw = SWITCHES[name][1]
    model.train()
    tr = ref.OfficialTraining(state, HEADS, **sw, base_lr=cfg.SOLVER.BASE_LR)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scheduler.step(1)
    tr.set_epoch(1, cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.WARMUP_ITERS)
    batch = make_batch()
    ref_out = tr.outputs(batch)
    outs = model({m: batch[m] for m in MODALITIES}, cam_label=batch["camid"])
    for out_name, expected in zip(ref.output_names(sw["direct"], sw["add_share"], sw["add_eloss"]), ref_out):
        ours = _ours_output(out_name, outs)
        if ours is None:  # the authors' [specific ; shared] scores, not computed unless ELOSS_HEADS
            assert name != "eloss_heads" and out_name.startswith("score")
            continue
        assert torch.allclose(ours, expected, atol=1e-5), (out_name, (ours - expected).abs().max())
    view = official_view(model)
    for k in ref.buffer_keys(state):
        if k in view:
            assert torch.allclose(view[k].float(), tr.params[k].float(), atol=1e-6), k
    if name == "eloss_heads":  # their RGB [specific ; shared] neck ran on all three modalities
        assert "bottleneck_rs.running_mean" in view and int(view["bottleneck_rs.num_batches_tracked"]) == 3

    terms = build_loss(cfg)(outs, batch["pid"])
    expected = ref.loss_terms(ref_out, batch["pid"], **tr.loss_kw)
    assert set(terms) == {("id_global" if k == "id" else "tri_global" if k == "tri" else k) for k in expected}
    for k, v in expected.items():
        ours = terms["id_global" if k == "id" else "tri_global" if k == "tri" else k]
        assert torch.allclose(ours, v, rtol=1e-5, atol=1e-6), (k, ours, v)
    loss, ref_loss = sum(terms.values()), ref.total(expected)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)

    optimizer.zero_grad()
    loss.backward()
    tr.optimizer.zero_grad()
    ref_loss.backward()
    grads = official_view(model, grad=True)
    scale = max(tr.params[k].grad.abs().max() for k in tr.trainable if tr.params[k].grad is not None)
    # Entries whose gradient, or Adam's input (gradient + L2 term), is 0 up to float noise (the attention key
    # bias, a gradient cancelling its weight decay): m / sqrt(v) turns that noise into steps of up to lr.
    zero = {}
    for k in tr.trainable:
        g_ref = tr.params[k].grad
        if g_ref is None:  # the authors' [specific ; shared] heads: no loss reads them
            assert k not in grads and re.match(r"(classifier|bottleneck)_(rs|ns|ts)\.", k), k
            continue
        err = (grads[k] - g_ref).abs().max()
        assert err <= 1e-4 * g_ref.abs().max() + 1e-5 * scale, f"gradient of {k} differs by {err}"
        adam_input = g_ref + tr.rules[k][1] * tr.params[k].detach()
        # and where Adam's input is within 100x this tensor's gradient difference: its first step
        # lr * g / (|g| + eps) then moves by up to lr * eps * err / g^2, more than float noise.
        zero[k] = (g_ref.abs() <= 1e-6 * scale) | (adam_input.abs() <= max(1e-7 * scale, 100 * float(err)))
    assert set(grads) <= set(tr.trainable)
    assert sum(int(z.sum()) for z in zero.values()) < 0.01 * sum(z.numel() for z in zero.values())

    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    lrs = {official_name(n): group_of[id(p)]["lr"] for n, p in model.named_parameters() if p.requires_grad}
    for k, g in zip(tr.trainable, tr.optimizer.param_groups):
        if k in lrs:
            assert lrs[k] == pytest.approx(g["lr"], rel=1e-12), k
    before = {k: v.clone() for k, v in official_view(model).items()}
    optimizer.step()
    tr.optimizer.step()
    after = official_view(model)
    for k in tr.trainable:
        if tr.params[k].grad is None:
            continue
        lr = lrs[k]
        got, want = after[k], tr.params[k].detach()
        assert (got - before[k]).abs().max() > 0.1 * lr, f"{k} did not move"
        keep = ~zero[k]
        assert torch.allclose(got[keep], want[keep], rtol=1e-6, atol=1e-9), \
            f"{k} differs by {(got[keep] - want[keep]).abs().max()} (lr {lr})"
        assert ((got - want)[~keep].abs() <= 2.5 * lr).all(), k


def test_the_defaults_correct_the_official_defects_without_changing_its_figures(tiny_cfg, tmp_path):
    """Default switches on the authors' checkpoint: their [specific ; shared] heads are dropped (every loss term
    unchanged: no loss reads them); GLOBAL_LOCAL averages the patches alone in training too (their evaluation's
    mean), so the evaluation feature is theirs and the training mean differs; the orthogonality loss is
    vectorised (equal to their loop over the batch)."""
    cfg, state, model = official_model(tiny_cfg, tmp_path, "recipe")
    batch = make_batch()
    x, cams = {m: batch[m] for m in MODALITIES}, batch["camid"]
    terms = build_loss(cfg)(model.train()(x, cam_label=cams), batch["pid"])
    ref_out = ref.training_outputs(dict(state), {k: v.clone() for k, v in state.items()}, x, cams, HEADS)
    expected = ref.loss_terms(ref_out, batch["pid"], orth_loop=True)
    assert all(torch.allclose(terms[k], v, rtol=1e-5, atol=1e-6) for k, v in expected.items())
    assert not hasattr(model, "classifiers_eloss")

    opts, sw = SWITCHES["global_local"]
    corrected = mdreid_cfg(tiny_cfg, *opts[:2])
    state = ref.random_official_state(CLASSES, CAMERAS, WIDTH, DEPTH, PATCH, OUT, SIZE, global_local=True, seed=1)
    torch.save(state, tmp_path / "gl.pth")
    model = load_weights(build_model(corrected, CLASSES, CAMERAS, pretrained=False), str(tmp_path / "gl.pth"))
    with torch.no_grad():
        ours = model.eval()(x, cam_label=cams)
        assert torch.allclose(ours, F.normalize(ref.eval_features(state, x, cams, HEADS, global_local=True), dim=1),
                              atol=1e-5)
        train = model.train()(x, cam_label=cams)["specific"]
        official = ref.training_outputs(state, {k: v.clone() for k, v in state.items()}, x, cams, HEADS,
                                        global_local=True)[1]
    assert (train[:, 0] - official).abs().max() > 1e-4


# (identities, cameras) of each benchmark's training split, and the authors' YAML values
# (configs/<name>/MDReID.yml of github.com/stone96123/MDReID).
RECIPES = {
    "RGBNT201": dict(sizes=(171, 3), size=[256, 128], batch=64, instances=8, base_lr=3.5e-4, seed=1555),
    "RGBNT100": dict(sizes=(50, 8), size=[128, 256], batch=64, instances=8, base_lr=1.5e-4, seed=1111),
    "MSVR310": dict(sizes=(155, 8), size=[128, 256], batch=64, instances=4, base_lr=3.5e-4, seed=1111),
}


@pytest.mark.parametrize("dataset", list(RECIPES))
def test_every_parameter_follows_the_official_lr_at_every_epoch(dataset):
    """The full ViT-B/16 model of each recipe: every trainable tensor's LR and weight decay at every epoch
    (scheduler stepped with the 1-based epoch) equal the official rule and scheduler's; the position embedding
    (both parts) at BASE_LR, the class embedding (the shared token) at 5e-6 as theirs."""
    r = RECIPES[dataset]
    cfg = load_config(os.path.join(ROOT, "configs", dataset, "MDReID.yml"),
                      ["MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu"])
    s, m = cfg.SOLVER, cfg.MODEL
    assert (list(cfg.INPUT.SIZE_TRAIN), s.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, s.BASE_LR, s.SEED) == \
        (r["size"], r["batch"], r["instances"], r["base_lr"], r["seed"])
    assert (m.METHOD, m.TRANSFORMER_TYPE, m.DIRECT, m.SIE_COE, m.ID_LOSS_WEIGHT, m.TRIPLET_LOSS_WEIGHT) == \
        ("MDReID", "ViT-B-16", 0, 1.0, 0.25, 1.0)
    mm = m.MDREID
    assert (mm.ADD_SHARE, mm.ADD_ELOSS, mm.ADD_CLOSS, mm.GLOBAL_LOCAL) == (True, True, True, False)
    assert (s.MAX_EPOCHS, s.WARMUP_ITERS, s.SCHEDULER, s.OPTIMIZER_NAME, s.CLASSIFIER_LR_FACTOR) == \
        (50, 10, "cosine", "Adam", 1.0)
    with torch.device("meta"):
        model = build_model(cfg, *r["sizes"], pretrained=False)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(named) > 150
    rules = {n: ref.param_lr_wd(official_name(n), s.BASE_LR) for n, _ in named}
    assert rules["backbone.vit.cls_token"][0] == 5e-6 and rules["shared_pos_embed"][0] == s.BASE_LR
    cache = {}
    for epoch in range(1, s.MAX_EPOCHS + 1):
        scheduler.step(epoch)
        for n, p in named:
            lr, wd = rules[n]
            if (lr, epoch) not in cache:
                cache[lr, epoch] = ref.mdreid_lr(lr, epoch, s.BASE_LR, s.MAX_EPOCHS, s.WARMUP_ITERS)
            g = group_of[id(p)]
            assert g["lr"] == pytest.approx(cache[lr, epoch], rel=1e-9, abs=0), f"{dataset} {n} epoch {epoch}"
            assert g["weight_decay"] == wd, f"{dataset} {n} epoch {epoch}"


def test_the_shared_token_lr_switch(tiny_cfg):
    """MODEL.MDREID.SHARED_TOKEN_BASE_LR: the class embedding (= the shared token) at BASE_LR, as the authors'
    rule for the shared token meant; the default keeps their recipe (the backbone LR)."""
    for value, expected in (("no", 5e-6), ("yes", 3.5e-4)):
        cfg = mdreid_cfg(tiny_cfg, "MODEL.MDREID.SHARED_TOKEN_BASE_LR", value)
        model = build_model(cfg, CLASSES, CAMERAS, pretrained=False)
        group_of = {id(p): g for g in build_optimizer(cfg, model).param_groups for p in g["params"]}
        params = dict(model.named_parameters())
        assert group_of[id(params["backbone.vit.cls_token"])]["lr"] == expected
        assert group_of[id(params["shared_pos_embed"])]["lr"] == group_of[id(params["backbone.vit.pos_embed"])]["lr"] \
            == 3.5e-4
        assert group_of[id(params["backbone.vit.blocks.0.attn.qkv.weight"])]["lr"] == 5e-6


def test_switch_combinations_and_backbones_are_checked(tiny_cfg):
    with pytest.raises(ValueError, match=r"MODEL.MDREID.ADD_CLOSS \(MODEL.ADD_CLOSS\) needs MODEL.MDREID.ADD_SHARE"):
        build_model(mdreid_cfg(tiny_cfg, "MODEL.ADD_SHARE", "no", "MODEL.ADD_ELOSS", "no"), CLASSES, CAMERAS)
    with pytest.raises(ValueError, match=r"needs at least 2 modalities"):
        build_model(mdreid_cfg(tiny_cfg), CLASSES, CAMERAS, modalities=("RGB",))
    model = build_model(mdreid_cfg(tiny_cfg, "MODEL.DIRECT", "1"), CLASSES, CAMERAS)  # the ratio loss reads features
    out = model(images(6, *SIZE), cam_label=torch.tensor([0, 1, 2, 0, 1, 2]))
    terms = build_loss(mdreid_cfg(tiny_cfg, "MODEL.DIRECT", "1"))(out, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert set(terms) == {"id_global", "tri_global", "orth", "ratio"}
    sum(terms.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    with pytest.raises(ValueError, match="missing must name modalities of the model"):
        model.eval()(images(2, *SIZE), cam_label=torch.tensor([0, 1]), missing=("RGB", "NI", "TI"))


def test_train_then_test_on_the_synthetic_benchmark(synth_root, tmp_path, tiny_cfg):
    """train.py and test.py with configs/Synthetic/MDReID_small.yml (shrunk to the tests' tiny sizes), test.py on the
    authors' layout of the same sizes, and refusals by name: the run's checkpoint under Signal, a shape key
    changed against its trained value, Signal's official checkpoint under MDReID."""
    out = tmp_path / "run"
    opts = [*TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCHS", "1",
            "TEST.EVAL_BEFORE_TRAIN", "no", "LOG.PROGRESS_BARS", "no"]
    config = os.path.join(ROOT, "configs", "Synthetic", "MDReID_small.yml")
    best = out / "best.pth"
    official = tmp_path / "MDReIDbest.pth"
    torch.save(ref.random_official_state(6, 3, WIDTH, DEPTH, PATCH, OUT, SIZE, seed=3), official)
    signal = tmp_path / "Signal_model.pth"
    torch.save(signal_ref.official_state_dict(build_model(tiny_cfg(), 6, 3, pretrained=False)), signal)
    run = lambda script, *extra: [os.path.join(ROOT, script), "--config_file", config, *opts, *extra]  # noqa: E731
    errors, printed = python_commands(
        (run("train.py"), 0),
        (run("test.py", "TEST.WEIGHT", best), 0),
        (run("test.py", "TEST.WEIGHT", best, "MODEL.METHOD", "Signal"), 2),
        (run("test.py", "TEST.WEIGHT", best, "MODEL.ADD_SHARE", "no", "MODEL.ADD_ELOSS", "no",
             "MODEL.ADD_CLOSS", "no"), 2),
        (run("test.py", "TEST.WEIGHT", official, "OUTPUT_DIR", str(tmp_path / "official")), 0),
        (run("test.py", "TEST.WEIGHT", signal, "OUTPUT_DIR", str(tmp_path / "signal")), 2),
        # the tools on an MDReID run: any-to-any missing modalities by its present-only rule, its cost, one
        # line where a tool draws what MDReID has not
        (run("test.py", "TEST.WEIGHT", best, "TEST.MISS", "any"), 0),
        ([os.path.join(ROOT, "tools", "model_cost.py"), "--config_file", config, *opts], 0),
        ([os.path.join(ROOT, "tools", "vis_offsets.py"), "--config_file", config, *opts, "--weight", best], 2),
        ([os.path.join(ROOT, "tools", "vis_cam.py"), "--config_file", config, *opts, "--weight", best, "--output",
          tmp_path / "cam.png"], 0),
        cwd=ROOT)
    log = open(out / "train_log.txt").read()
    assert "test feature 96-d" in log  # [g ; s] of three modalities, 16 wide
    meta = torch.load(best, map_location="cpu", weights_only=False)["meta"]
    assert meta["method"] == "MDReID" and meta["num_classes"] == 6
    assert "MODEL.METHOD 'MDReID'" in errors[2] and "'Signal'" in errors[2]
    assert "MODEL.MDREID.ADD_SHARE True" in errors[3]
    assert any(name.endswith(".json") for name in os.listdir(tmp_path / "official"))
    assert "MDReID" in errors[5] and "MODEL.METHOD Signal" in errors[5]
    table = json.load(open(result_file(str(out), "test_best_Synthetic_miss-any")))
    assert table["missing_rule"] == "feature from the present modalities only" and len(table["table"]) == 7
    assert "| SHARED_POS_EMBED |" in printed or "| total |" in printed
    assert errors[8].strip() == "error: vis_offsets.py draws Signal's LAM offsets; MODEL.METHOD MDReID has no LAM"
    assert (tmp_path / "cam.png").is_file()  # Grad-CAM through the encoder as MDReID runs it (shared token)


def test_checkpoints_of_another_method_are_refused_naming_both(tiny_cfg, tmp_path):
    """This project's Signal checkpoint under MODEL.METHOD MDReID and its MDReID checkpoint under Signal name
    both methods (from the stored config, else the stored meta), as does the authors' MDReID layout under
    Signal (from its keys)."""
    signal_cfg, cfg = tiny_cfg(), mdreid_cfg(tiny_cfg)
    for trained, asked, other in ((signal_cfg, cfg, "Signal"), (cfg, signal_cfg, "MDReID")):
        model = build_model(trained, CLASSES, CAMERAS, pretrained=False)
        path = tmp_path / f"{other}.pth"
        torch.save({"model": model.state_dict(), "meta": checkpoint_meta(model), "config": trained.dump()}, path)
        with pytest.raises(WeightsError, match=rf"trained with .*MODEL.METHOD '{other}'.*the config asks for .*"
                                               rf"'{asked.MODEL.METHOD}'"):
            load_eval_model(asked, str(path))
        torch.save({"model": model.state_dict(), "meta": checkpoint_meta(model)}, path)  # no config: the meta tells
        with pytest.raises(WeightsError, match=rf"checkpoint of the method '{other}', but MODEL.METHOD is "
                                               rf"'{asked.MODEL.METHOD}'"):
            load_eval_model(asked, str(path))
    official = tmp_path / "MDReIDbest.pth"  # the authors' layout, recognised from its keys
    torch.save(ref.random_official_state(CLASSES, CAMERAS, WIDTH, DEPTH, PATCH, OUT, SIZE), official)
    with pytest.raises(WeightsError, match=r"MDReID model, but MODEL.METHOD is 'Signal'"):
        load_eval_model(signal_cfg, str(official))
    model, cams = load_eval_model(cfg, str(official))
    assert type(model).__name__ == "MDReID" and cams == CAMERAS


def test_query_and_gallery_with_different_modalities_are_compared_by_modality(tiny_cfg, tmp_path):
    """Any-to-any with present-only features: the chunks of the modalities present on both sides ([g ; s] of
    those), or with none in common each side's mean shared token; equal settings unchanged."""
    cfg, state, model = official_model(tiny_cfg, tmp_path, "recipe")
    model.eval()
    x, cams = images(3, *SIZE, seed=5), torch.tensor([0, 1, 2])
    with torch.no_grad():
        q, g = encode(model, x, cams, "r"), encode(model, x, cams, "t")     # present: NI, TI / RGB, NI
        qq, gg = model.pair_features(q, g, ("RGB",), ("TI",))
        qc, gc = q.chunk(4, 1), g.chunk(4, 1)                                  # [gN, gT, sN, sT] / [gR, gN, sR, sN]
        assert torch.allclose(qq, F.normalize(torch.cat([qc[0], qc[2]], 1), dim=1))
        assert torch.allclose(gg, F.normalize(torch.cat([gc[1], gc[3]], 1), dim=1))
        only_r, only_t = encode(model, x, cams, "nt"), encode(model, x, cams, "rn")
        qq, gg = model.pair_features(only_r, only_t, ("NI", "TI"), ("RGB", "NI"))
        assert torch.allclose(qq, F.normalize(only_r.chunk(2, 1)[1], dim=1))
        assert torch.allclose(gg, F.normalize(only_t.chunk(2, 1)[1], dim=1))
        assert model.pair_features(q, q, ("RGB",), ("RGB",))[0] is q
