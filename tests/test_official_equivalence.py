"""Eval features after loading an official-layout checkpoint equal a reference implementation of the
official model's forward (per-modality encoder calls, per-sample selection loops, zeroed patches)."""
import math

import pytest
import torch
import torch.nn.functional as F

from modeling import build_model, load_weights

from .test_weights import CUSTOM, HEADS, LAYERS, OUT, PATCH, WIDTH, official_state_dict


def reference_encoder(sd, x, cam):
    """OpenAI CLIP visual tower with the camera embedding on the class token (official forward)."""
    p = "clip_vision_encoder.base."
    f = {k[len(p):]: v.float() for k, v in sd.items() if k.startswith(p)}
    x = F.conv2d(x, f["conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = f["class_embedding"] + torch.zeros(x.shape[0], 1, WIDTH)
    cls[:, 0] = cls[:, 0] + sd["clip_vision_encoder.cv_embed"][cam][:, 0]
    x = torch.cat([cls, x], 1) + f["positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), f["ln_pre.weight"], f["ln_pre.bias"])
    for i in range(LAYERS):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (WIDTH,), f[b + "ln_1.weight"], f[b + "ln_1.bias"]).transpose(0, 1)
        a = F.multi_head_attention_forward(h, h, h, WIDTH, HEADS, f[b + "attn.in_proj_weight"],
                                           f[b + "attn.in_proj_bias"], None, None, False, 0.0,
                                           f[b + "attn.out_proj.weight"], f[b + "attn.out_proj.bias"],
                                           need_weights=False)[0]
        x = x + a.transpose(0, 1)
        h = F.layer_norm(x, (WIDTH,), f[b + "ln_2.weight"], f[b + "ln_2.bias"])
        h = F.linear(h, f[b + "mlp.c_fc.weight"], f[b + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, f[b + "mlp.c_proj.weight"], f[b + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (WIDTH,), f["ln_post.weight"], f["ln_post.bias"]) @ f["proj"]
    return x[:, 1:], x[:, 0]


def reference_sim(sd, patches, globals_, k):
    """Official SIM: loops over the batch to build the masks, zeroes unselected patches."""
    lin = lambda name, t: F.linear(t, sd[f"SIM.token_selection.{name}.weight"], sd[f"SIM.token_selection.{name}.bias"])
    B, L, D = patches[0].shape
    masks = [torch.zeros(B, L) for _ in range(3)]
    for m in range(3):
        s = torch.softmax(torch.bmm(globals_[m].unsqueeze(1), patches[m].transpose(1, 2)).squeeze(1) / math.sqrt(D), 1)
        idx = s.topk(min(k, L), dim=1).indices
        for i in range(B):
            masks[m][i, idx[i]] = 1
    q = lin("W_q", torch.stack(globals_, 1))
    keys = lin("W_k", torch.cat(patches, 1))
    scores = torch.softmax(torch.bmm(q, keys.transpose(1, 2)) / math.sqrt(D), 2)
    for m in range(3):
        others = [u for u in range(3) if u != m]
        s = torch.cat([scores[:, m, u * L:(u + 1) * L] for u in others], 1)
        idx = s.topk(min(2 * k, 2 * L), dim=1).indices
        for i in range(B):
            for j in idx[i].tolist():
                masks[others[j // L]][i, j % L] = 1
    selected = torch.cat([p * mk.unsqueeze(-1) for p, mk in zip(patches, masks)], 1)
    g = torch.stack(globals_, 1)
    pre = "SIM.modal_interactive."
    attn = F.multi_head_attention_forward(
        g.transpose(0, 1), selected.transpose(0, 1), selected.transpose(0, 1), D, 8 if D % 8 == 0 else 2,
        sd[pre + "cross_attn.in_proj_weight"], sd[pre + "cross_attn.in_proj_bias"], None, None, False, 0.0,
        sd[pre + "cross_attn.out_proj.weight"], sd[pre + "cross_attn.out_proj.bias"], need_weights=False)[0]
    x = F.layer_norm(g + attn.transpose(0, 1), (D,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
    h = F.linear(F.gelu(F.linear(x, sd[pre + "ffn.0.weight"], sd[pre + "ffn.0.bias"])),
                 sd[pre + "ffn.2.weight"], sd[pre + "ffn.2.bias"])
    x = F.layer_norm(x + h, (D,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
    return x.flatten(1)


@pytest.mark.parametrize("k", [3, 40])
def test_eval_features_equal_the_official_forward(tiny_cfg, tmp_path, k):
    torch.manual_seed(k)
    cfg = tiny_cfg(*CUSTOM, "MODEL.TOPK", str(k), "MODEL.SIM_HEADS", "8")
    official = official_state_dict(build_model(cfg, 5, 3))
    torch.save(official, tmp_path / "Signal_model.pth")
    model = load_weights(build_model(cfg, 5, 3), str(tmp_path / "Signal_model.pth")).eval()
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(3, 3, 64, 32, generator=g) for m in ("RGB", "NI", "TI")}
    cams = torch.tensor([2, 0, 1])
    with torch.no_grad():
        ours = model(x, cam_label=cams)
        sd = {kk: v.float() if v.is_floating_point() else v for kk, v in official.items()}
        outs = [reference_encoder(sd, x[m], cams) for m in ("RGB", "NI", "TI")]
        patches, globals_ = [o[0] for o in outs], [o[1] for o in outs]
        ref = torch.cat([torch.cat(globals_, 1), reference_sim(sd, patches, globals_, k)], 1)
        ref = F.normalize(ref, dim=1)
    assert ours.shape == ref.shape == (3, 6 * OUT)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
