"""Weight loading: OpenAI CLIP layout (state dict and TorchScript archive), our checkpoints, the official
Signal checkpoint layout, and clear errors."""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling import WeightsError, build_model, load_pretrained_backbone, load_weights
from reference.official import official_state_dict

from .conftest import images

WIDTH, LAYERS, HEADS, PATCH, OUT = 32, 2, 2, 8, 16


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, HEADS)
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(WIDTH, 4 * WIDTH), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * WIDTH, WIDTH)))
        self.ln_2 = nn.LayerNorm(WIDTH)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.resblocks = nn.Sequential(*[RefBlock() for _ in range(LAYERS)])


class RefVisual(nn.Module):
    """The OpenAI CLIP visual tower as the official Signal code runs it (camera embedding on the class
    token, bilinear position-embedding resize, ln_post and proj on every token)."""

    def __init__(self, grid=7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH) * 0.2)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, WIDTH) * 0.2)
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = RefTransformer()
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.randn(WIDTH, OUT) * 0.2)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.05)

    def run(self, x, cv_emb, hw):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, WIDTH)
        cls[:, 0] = cls[:, 0] + cv_emb
        x = torch.cat([cls, x], 1)
        pos = self.positional_embedding
        g = int((pos.shape[0] - 1) ** 0.5)
        grid = pos[1:].reshape(1, g, g, WIDTH).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode="bilinear", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(-1, WIDTH)])
        x = self.ln_pre(x + pos).transpose(0, 1)
        x = self.transformer.resblocks(x).transpose(0, 1)
        return self.ln_post(x) @ self.proj

    def forward(self, x):
        return x


class RefCLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = RefVisual()

    def forward(self, x):
        return x


CUSTOM = ["MODEL.CUSTOM_VIT.EMBED_DIM", str(WIDTH), "MODEL.CUSTOM_VIT.DEPTH", str(LAYERS),
          "MODEL.CUSTOM_VIT.NUM_HEADS", str(HEADS), "MODEL.CUSTOM_VIT.OUT_DIM", str(OUT),
          "MODEL.CUSTOM_VIT.PATCH_SIZE", str(PATCH)]


@pytest.mark.parametrize("archive", [False, True])
def test_openai_clip_checkpoint_reproduces_the_reference_tower(tiny_cfg, tmp_path, archive):
    torch.manual_seed(0)
    ref = RefCLIP().eval()
    path = str(tmp_path / ("ViT.pt" if archive else "ViT.pth"))
    if archive:
        torch.jit.script(ref).save(path)
    else:
        torch.save(ref.state_dict(), path)
    model = build_model(tiny_cfg(*CUSTOM, "MODEL.PRETRAIN_PATH", path), 3, 3).eval()
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([2, 0])
    with torch.no_grad():
        cls, patches = model.backbone(x, cams)
        expected = ref.visual.run(x, model.backbone.cam_embed[cams][:, 0], (8, 4))
    assert torch.allclose(cls, expected[:, 0], atol=1e-5)
    assert torch.allclose(patches, expected[:, 1:], atol=1e-5)


def test_missing_and_mismatched_pretrained_files(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_model(tiny_cfg(*CUSTOM, "MODEL.PRETRAIN_PATH", str(tmp_path / "nope.pt")), 3, 3)
    ref = RefCLIP()
    sd = ref.state_dict()
    sd["visual.proj"] = torch.randn(WIDTH, OUT + 1)
    del sd["visual.ln_post.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    model = build_model(tiny_cfg(*CUSTOM), 3, 3)
    with pytest.raises(WeightsError) as e:
        load_pretrained_backbone(model.backbone, str(tmp_path / "bad.pth"))
    assert "head.weight" in str(e.value) and "norm.weight" in str(e.value) and "bad.pth" in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="cannot read the weights file"):
        load_pretrained_backbone(model.backbone, str(tmp_path / "junk.pth"))


def test_own_checkpoint_round_trip(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*CUSTOM)
    a = build_model(cfg, 5, 3).eval()
    torch.save({"model": a.state_dict(), "epoch": 3}, tmp_path / "ck.pth")
    b = load_weights(build_model(cfg, 5, 3), str(tmp_path / "ck.pth")).eval()
    x, cams = images(3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(a(x, cam_label=cams), b(x, cam_label=cams))
    with pytest.raises(WeightsError, match="classifier.weight: checkpoint"):
        load_weights(build_model(cfg, 6, 3), str(tmp_path / "ck.pth"))


def test_official_checkpoint_layout_is_converted_completely(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*CUSTOM)
    src = build_model(cfg, 5, 3).eval()
    official = official_state_dict(src)
    assert any(v.dtype == torch.float16 for v in official.values())
    torch.save(official, tmp_path / "Signal_model.pth")
    dst = load_weights(build_model(cfg, 5, 3), str(tmp_path / "Signal_model.pth")).eval()
    # Every tensor lands where it belongs (backbone conv/linear weights rounded to fp16 as stored).
    for k, v in src.state_dict().items():
        w = dst.state_dict()[k]
        if k.startswith("backbone.vit.") and v.dim() > 1 and k not in ("backbone.vit.cls_token", "backbone.vit.pos_embed"):
            v = v.half().float()
        assert torch.equal(v, w), k
    with torch.no_grad():
        for k, p in src.named_parameters():
            if k.startswith("backbone.vit.") and p.dim() > 1 and k not in ("backbone.vit.cls_token", "backbone.vit.pos_embed"):
                p.copy_(p.half().float())
        x, cams = images(3), torch.tensor([0, 1, 2])
        assert torch.allclose(src(x, cam_label=cams), dst(x, cam_label=cams), atol=1e-6)


def test_official_checkpoint_with_leftover_keys_is_an_error(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*CUSTOM)
    official = official_state_dict(build_model(cfg, 5, 3))
    official["SIM.extra.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="unexpected key  SIM.extra.weight"):
        load_weights(build_model(cfg, 5, 3), str(tmp_path / "x.pth"))


def test_timm_imagenet_layout_drops_the_classifier_and_resizes_positions(tiny_cfg, tmp_path):
    from timm.models.vision_transformer import VisionTransformer
    src = VisionTransformer(img_size=56, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS,
                            num_classes=10, pre_norm=True)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    cfg = tiny_cfg("MODEL.CUSTOM_VIT.EMBED_DIM", str(WIDTH), "MODEL.CUSTOM_VIT.DEPTH", str(LAYERS),
                   "MODEL.CUSTOM_VIT.NUM_HEADS", str(HEADS), "MODEL.CUSTOM_VIT.OUT_DIM", "0",
                   "MODEL.PRETRAIN_PATH", str(tmp_path / "imagenet.pth"))
    model = build_model(cfg, 3, 3)
    vit = model.backbone.vit
    assert vit.pos_embed.shape == (1, 1 + 8 * 4, WIDTH)
    assert torch.equal(vit.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    grid = src.pos_embed[:, 1:].reshape(1, 7, 7, WIDTH).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 4), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 32, WIDTH)
    assert torch.allclose(vit.pos_embed[:, 1:], ref, atol=1e-6)
    assert model.backbone.out_dim == WIDTH


def test_a_signal_model_as_pretrain_path_fine_tunes_from_it(tiny_cfg, tmp_path, caplog):
    """MODEL.PRETRAIN_PATH may name a whole Signal model (a run's best.pth, a plain state dict or the
    official checkpoint): everything loads, classifiers of another identity count are re-initialised."""
    import logging

    from modeling import build_model

    from reference.official import official_state_dict
    torch.manual_seed(0)
    src = build_model(tiny_cfg(), 5, 3)
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "best.pth")
    torch.save(official_state_dict(src), tmp_path / "official.pth")
    for name in ("best.pth", "official.pth"):
        cfg = tiny_cfg("MODEL.PRETRAIN_PATH", str(tmp_path / name))
        same = build_model(cfg, 5, 3).state_dict()
        ref = src.state_dict()
        assert all(torch.allclose(same[k].float(), ref[k].float(), atol=1e-3) for k in ref
                   if not k.endswith("num_batches_tracked")), name
        with caplog.at_level(logging.WARNING, logger="signal"):
            other = build_model(cfg, 7, 3).state_dict()
        assert "Classifiers re-initialised (the checkpoint has 5 identities, this data 7)" in caplog.text
        assert torch.equal(other["backbone.vit.pos_embed"].float(), ref["backbone.vit.pos_embed"].float()) \
            or name == "official.pth"
        assert other["classifier.weight"].shape[0] == 7
    with pytest.raises(WeightsError, match="backbone.cam_embed: checkpoint"):
        build_model(tiny_cfg("MODEL.PRETRAIN_PATH", str(tmp_path / "best.pth")), 5, 4)
