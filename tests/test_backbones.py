"""timm backbones beyond CLIP (DINOv3, DINOv2 with registers, EVA02-CLIP): built from the config, loaded from
local weight files in timm / Hugging Face formats, and reproducing timm's own class token from the same
weights, with register tokens kept out of the patch tokens."""
import pytest
import torch

from config import load_config
from modeling import build_model
from modeling.backbone import ViTBackbone, create_vit
from modeling.weights import load_pretrained_backbone
from utils.versions import torch_version

from .conftest import TINY
from .helpers import result_file

timm = pytest.importorskip("timm")

# small members of each family (the base models of the configs are the same code at another width)
FAMILIES = [("vit_small_patch16_dinov3", (64, 32), 4), ("vit_small_patch14_reg4_dinov2", (56, 28), 4),
            ("vit_small_patch14_dinov2", (56, 28), 0), ("eva02_base_patch16_clip_224", (64, 32), 0)]


def _random_timm(name, seed=0):
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, num_classes=0)      # the released input size
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    return m


def _save(state, path):
    state = {k: v.contiguous() for k, v in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)


def _ours_and_timms(name, size, path, seed):
    """(our class token, our patch tokens, timm's tokens, timm's model) after each loads ``path``."""
    backbone = ViTBackbone(create_vit(name, size), 0).eval()
    load_pretrained_backbone(backbone, path)
    ref = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0,
                            img_size=size).eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cls, patches = backbone(x)
        return cls, patches, ref.forward_features(x), ref


@pytest.mark.parametrize("name,size,registers", FAMILIES)
@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin"])
def test_class_token_equals_timms_own_loading(tmp_path, name, size, registers, fmt):
    path = str(tmp_path / fmt)
    _save(_random_timm(name).state_dict(), path)
    cls, patches, tokens, ref = _ours_and_timms(name, size, path, 1)
    assert ref.num_prefix_tokens == 1 + registers
    h, w = size[0] // ref.patch_embed.patch_size[0], size[1] // ref.patch_embed.patch_size[1]
    assert patches.shape[1] == h * w                                               # no register token
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5, rtol=1e-4)
    assert torch.allclose(patches, tokens[:, ref.num_prefix_tokens:], atol=1e-5, rtol=1e-4)


def test_a_file_name_does_not_decide_the_format(tmp_path):
    """A safetensors file named .pth loads as safetensors: every tensor arrives with its values."""
    path = str(tmp_path / "weights.pth")
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in _random_timm("vit_small_patch16_dinov3").state_dict().items()}
    save_file(state, path)
    backbone = ViTBackbone(create_vit("vit_small_patch16_dinov3", (64, 32)), 0)
    load_pretrained_backbone(backbone, path)
    loaded = backbone.vit.state_dict()
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_keys_are_listed(tmp_path):
    from modeling import WeightsError
    state = _random_timm("vit_small_patch14_dinov2").state_dict()
    state.pop("blocks.3.mlp.fc1.weight")
    _save(state, str(tmp_path / "w.bin"))
    with pytest.raises(WeightsError, match="missing key     blocks.3.mlp.fc1.weight"):
        load_pretrained_backbone(ViTBackbone(create_vit("vit_small_patch14_dinov2", (56, 28)), 0),
                                 str(tmp_path / "w.bin"))


@pytest.mark.parametrize("name,size", [("vit_small_patch16_dinov3", (64, 32)), ("vit_small_patch14_reg4_dinov2", (56, 28))])
def test_the_camera_embedding_reaches_the_class_token(name, size):
    torch.manual_seed(0)
    b = ViTBackbone(create_vit(name, size), num_cameras=3).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, pa = b(x, torch.tensor([0, 0]))
        c, pc = b(x, torch.tensor([1, 2]))
        b.cam_embed.zero_()
        z, _ = b(x, torch.tensor([0, 0]))
        ref = b.vit.forward_features(x)[:, 0]
    assert not torch.allclose(a, c) and torch.allclose(z, ref, atol=1e-6)


@pytest.mark.parametrize("name,size", [("vit_small_patch16_dinov3", "[128,64]"), ("vit_small_patch14_dinov2", "[112,56]"),
                                       ("vit_small_patch14_reg4_dinov2", "[112,56]"),
                                       pytest.param("eva02_base_patch16_clip_224", "[128,64]", marks=pytest.mark.skipif(
                                           torch_version() < (2, 3), reason="a base-size model end to end: checked "
                                           "on the newest stack; EVA-02 loading is tested on every stack"))])
def test_signal_trains_and_evaluates_from_yaml_on_a_timm_backbone(synth_root, tmp_path, monkeypatch, name, size):
    """train.py from a YAML file on each backbone family (one epoch on the synthetic benchmark), then the
    checkpoint loads back through test.py."""
    import json
    import sys

    import test as test_script
    import train
    cfg = load_config("", TINY + ["DATASETS.ROOT_DIR", synth_root, "MODEL.TRANSFORMER_TYPE", name, "INPUT.SIZE_TRAIN",
                                  size, "INPUT.SIZE_TEST", size, "MODEL.TOPK", "3", "SOLVER.BACKBONE_LR", "1e-5",
                                  "SOLVER.LAYER_DECAY", "0.75", "SOLVER.MAX_EPOCHS", "1", "LOG.PROGRESS_BARS", "no",
                                  "OUTPUT_DIR", str(tmp_path / "run")])
    yml = tmp_path / "backbone.yml"
    yml.write_text(cfg.dump())
    monkeypatch.setattr(sys, "argv", ["train.py", "--config_file", str(yml)])
    train.main()
    record = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert 0 <= record["mAP"] <= 1 and all(v == v for v in record.values())
    monkeypatch.setattr(sys, "argv", ["test.py", "--config_file", str(yml), "TEST.WEIGHT", str(tmp_path / "run" / "best.pth")])
    test_script.main()
    assert json.load(open(result_file(str(tmp_path / "run"), "test_best_Synthetic")))["mAP"] == pytest.approx(record["mAP"])


def test_patch_size_rules_follow_the_backbone():
    lr = ["SOLVER.BACKBONE_LR", "1e-5"]
    with pytest.raises(ValueError, match="multiple of the backbone's patch size 14"):
        load_config("", TINY + lr + ["MODEL.TRANSFORMER_TYPE", "vit_small_patch14_dinov2"])
    cfg = load_config("", TINY + lr + ["MODEL.TRANSFORMER_TYPE", "vit_small_patch14_dinov2", "INPUT.SIZE_TRAIN",
                                       "[56,28]", "INPUT.SIZE_TEST", "[56,28]"])
    assert cfg.MODEL.TRANSFORMER_TYPE == "vit_small_patch14_dinov2"
    with pytest.raises(ValueError, match="MODEL.TRANSFORMER_TYPE must be"):
        load_config("", ["MODEL.TRANSFORMER_TYPE", "resnet50"])


def _meta_dinov2(state, dim):
    """timm's DINOv2 state in the naming of Meta's release (mask_token, register_tokens, a position embedding
    that covers the class token)."""
    out = dict(state)
    out["mask_token"] = torch.zeros(1, dim)
    if "reg_token" in out:
        pos0 = torch.randn(1, 1, dim) * 0.02
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = out["cls_token"] - pos0
        out["pos_embed"] = torch.cat([pos0, out["pos_embed"]], 1)
    return out


def _meta_dinov3(state, dim):
    """timm's DINOv3 state in the naming of Meta's release (storage tokens, ls*.gamma, rope periods)."""
    out = {}
    for k, v in state.items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[k] = v
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.ones(dim // 12)
    return out


@pytest.mark.parametrize("name,size,convert,file", [
    ("vit_small_patch14_dinov2", (56, 28), _meta_dinov2, "dinov2_vits14_pretrain.pth"),
    ("vit_small_patch14_reg4_dinov2", (56, 28), _meta_dinov2, "dinov2_vits14_reg4_pretrain.pth"),
    ("vit_small_patch16_dinov3", (64, 32), _meta_dinov3, "dinov3_vits16_pretrain_lvd1689m.pth"),
])
def test_meta_release_checkpoints_load(tmp_path, name, size, convert, file):
    src = _random_timm(name)
    path = str(tmp_path / file)
    torch.save(convert(src.state_dict(), src.embed_dim), path)
    cls, _, tokens, _ = _ours_and_timms(name, size, path, 2)
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5, rtol=1e-4)
    # and the converted class token is the released model's: compare with the source model at its own size
    native = tuple(src.patch_embed.img_size)
    with torch.no_grad():
        full = ViTBackbone(create_vit(name, native), 0).eval()
        load_pretrained_backbone(full, path)
        xn = torch.randn(1, 3, *native, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(full(xn)[0], src.eval().forward_features(xn)[:, 0], atol=1e-5, rtol=1e-4)


def test_openclip_eva02_checkpoint_loads(tmp_path):
    """EVA02-CLIP as OpenCLIP stores it: the timm trunk under 'visual.trunk.', next to the text tower."""
    src = _random_timm("eva02_base_patch16_clip_224")
    state = {"visual.trunk." + k: v for k, v in src.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(10, 8)
    path = str(tmp_path / "open_clip_pytorch_model.bin")
    torch.save(state, path)
    backbone = ViTBackbone(create_vit("eva02_base_patch16_clip_224", (224, 224)), 0).eval()
    load_pretrained_backbone(backbone, path)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(backbone(x)[0], src.eval().forward_features(x)[:, 0], atol=1e-5, rtol=1e-4)


def test_the_backbone_lr_is_explicit_and_layer_decay_scales_it():
    from solver import backbone_lr, build_optimizer, param_rule
    with pytest.raises(ValueError, match="SOLVER.BACKBONE_LR must be set for the backbone vit_small_patch14_dinov2"):
        load_config("", ["MODEL.TRANSFORMER_TYPE", "vit_small_patch14_dinov2", "INPUT.SIZE_TRAIN", "[252,126]",
                         "INPUT.SIZE_TEST", "[252,126]"])
    assert backbone_lr(load_config("", [])) == 5e-6                                   # CLIP: the official rule
    assert backbone_lr(load_config("", ["MODEL.TRANSFORMER_TYPE", "vit_base_patch16_224"])) == pytest.approx(0.8 * 3.5e-4)
    assert backbone_lr(load_config("", ["SOLVER.BACKBONE_LR", "2e-5"])) == 2e-5
    assert backbone_lr(load_config("", ["SOLVER.BACKBONE_LR", "0", "SOLVER.BACKBONE_LR_FACTOR", "0.5"])) == \
        pytest.approx(0.5 * 3.5e-4)
    cfg = load_config("", TINY + ["SOLVER.BACKBONE_LR", "1e-4", "SOLVER.LAYER_DECAY", "0.5"])   # 2 blocks
    assert param_rule(cfg, "backbone.vit.blocks.1.mlp.fc1.weight", 2)[0] == pytest.approx(1e-4 * 0.5)
    assert param_rule(cfg, "backbone.vit.blocks.0.mlp.fc1.weight", 2)[0] == pytest.approx(1e-4 * 0.25)
    assert param_rule(cfg, "backbone.vit.patch_embed.proj.weight", 2)[0] == pytest.approx(1e-4 * 0.125)
    assert param_rule(cfg, "backbone.vit.norm.weight", 2)[0] == pytest.approx(1e-4)
    assert param_rule(cfg, "sim.interaction.proj.weight", 2)[0] == cfg.SOLVER.BASE_LR
    opt = build_optimizer(cfg, build_model(cfg, 5, 3))
    assert {round(g["lr"] / 1e-4, 6) for g in opt.param_groups} >= {1.0, 0.5, 0.25, 0.125}
