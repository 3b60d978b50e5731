import pytest
import torch

from modeling import (DeformableSampler, LocalAlignment, SelectiveInteraction, TokenSelection, build_loss,
                      build_model)

from .conftest import images


@pytest.mark.parametrize("direct", [0, 1])
@pytest.mark.parametrize("modules", [(False, False, False), (True, False, False), (True, True, True)])
def test_output_shapes(tiny_cfg, direct, modules):
    sim, gam, lam = modules
    cfg = tiny_cfg("MODEL.DIRECT", str(direct), "MODEL.USE_SIM", str(sim), "MODEL.USE_GAM", str(gam),
                   "MODEL.USE_LAM", str(lam))
    model = build_model(cfg, num_classes=7, num_cameras=3)
    x, cams = images(4), torch.tensor([0, 1, 2, 0])
    out = model(x, cam_label=cams)
    expected = {"global"} if direct else {"RGB", "NI", "TI"}
    if sim:
        expected.add("sim")
    assert set(out["heads"]) == expected
    for name, head in out["heads"].items():
        assert head["score"].shape == (4, 7)
        assert head["feat"].shape == (4, 16 if name in ("RGB", "NI", "TI") else 48)
    assert ("gam" in out) == gam and ("lam" in out) == lam
    model.eval()
    feat = model(x, cam_label=cams)
    assert feat.shape == (4, model.feat_dim) == (4, 96 if sim else 48)
    assert torch.allclose(feat.norm(dim=1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("direct", [0, 1])
def test_every_parameter_gets_a_gradient(tiny_cfg, direct):
    cfg = tiny_cfg("MODEL.DIRECT", str(direct))
    model = build_model(cfg, num_classes=3, num_cameras=3)
    losses = build_loss(cfg)(model(images(6), cam_label=torch.tensor([0, 1, 2, 0, 1, 2])),
                             torch.tensor([0, 0, 1, 1, 2, 2]))
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_sie_requires_camera_labels(tiny_cfg):
    model = build_model(tiny_cfg(), 3, 3).eval()
    with pytest.raises(ValueError, match="cam_label is required"):
        model(images(2))


def test_camera_embedding_is_added_to_the_class_token_before_the_position_embedding(tiny_cfg):
    model = build_model(tiny_cfg("MODEL.SIE_COE", "2.0"), 3, 3).eval()
    bb, v = model.backbone, model.backbone.vit
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([1, 2])
    with torch.no_grad():
        cls = v.cls_token.expand(2, -1, -1) + 2.0 * bb.cam_embed[cams]
        tokens = torch.cat([cls, v.patch_embed(x)], 1) + v.pos_embed
        ref = v.head(v.norm(v.blocks(v.norm_pre(tokens))))
        got_cls, got_patches = bb(x, cams)
        other_cls, _ = bb(x, torch.tensor([0, 0]))
    assert torch.allclose(got_cls, ref[:, 0], atol=1e-5) and torch.allclose(got_patches, ref[:, 1:], atol=1e-5)
    assert not torch.allclose(got_cls, other_cls)


def _reference_selection(patches, cls, W_q, W_k, k):
    """Per-sample loop version of the documented selection rules."""
    B, M, N, D = patches.shape
    intra = torch.zeros(B, M, N, dtype=torch.bool)
    inter = torch.zeros(B, M, N, dtype=torch.bool)
    for b in range(B):
        for m in range(M):
            s = torch.softmax(patches[b, m] @ cls[b, m] / D ** 0.5, 0)
            intra[b, m, s.topk(min(k, N)).indices] = True
        q = W_q(cls[b])
        keys = W_k(patches[b].reshape(M * N, D))
        s = torch.softmax(q @ keys.T / D ** 0.5, 1)
        for m in range(M):
            others = [u for u in range(M) if u != m]
            cat = torch.cat([s[m, u * N:(u + 1) * N] for u in others])
            for j in cat.topk(min(2 * k, len(cat))).indices.tolist():
                inter[b, others[j // N], j % N] = True
    return intra, inter


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_sim_keeps_the_documented_tokens(k):
    torch.manual_seed(k)
    sel = TokenSelection(dim=8, topk=k)
    patches, cls = torch.randn(3, 3, 12, 8), torch.randn(3, 3, 8)
    intra, inter = sel(patches, cls)
    assert (intra.sum(-1) == min(k, 12)).all()
    # Each query marks min(2k, 2N) patches among the other two modalities.
    assert inter.sum((1, 2)).max() <= 3 * min(2 * k, 24)
    ref_intra, ref_inter = _reference_selection(patches, cls, sel.W_q, sel.W_k, k)
    assert torch.equal(intra, ref_intra) and torch.equal(inter, ref_inter)


def test_sim_switch_masks_instead_of_zeroing():
    torch.manual_seed(0)
    zero = SelectiveInteraction(dim=8, topk=2, num_heads=2, mask_unselected=False).eval()
    masked = SelectiveInteraction(dim=8, topk=2, num_heads=2, mask_unselected=True).eval()
    masked.load_state_dict(zero.state_dict())
    patches, cls = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 8)
    keep = zero.select(patches, cls)
    assert torch.equal(keep, masked.select(patches, cls))  # the switch does not change the selection
    with torch.no_grad():
        # Official: zeroed patches stay in the key/value sequence.
        ref_zero = zero.interaction(cls, (patches * keep.unsqueeze(-1)).reshape(2, 18, 8))
        assert torch.allclose(zero(patches, cls), ref_zero, atol=1e-6)
        # Variant: attention over the selected patches alone.
        out = masked(patches, cls)
        for b in range(2):
            sel = patches[b].reshape(18, 8)[keep[b].reshape(18)]
            ref = masked.interaction(cls[b:b + 1], sel[None])
            assert torch.allclose(out[b], ref[0], atol=1e-5)
    assert not torch.allclose(out, ref_zero)


def test_lam_offsets_stay_in_range():
    torch.manual_seed(0)
    for channels in (1, 2):
        s = DeformableSampler(dim=8, kernel_size=4, stride=4, offset_range=2.0, offset_channels=channels)
        with torch.no_grad():
            s.conv_offset[-1].weight.mul_(100)  # saturate the tanh
        x = torch.randn(2, 8, 16, 8)
        pos, ref = s.sampling_points(x)
        Hk, Wk = 4, 2
        assert pos.shape == (2, Hk, Wk, 2)
        assert pos.abs().max() <= 1.0
        off = pos - ref.clamp(-1, 1)
        assert (off[..., 0].abs() <= 2.0 * 2 / (Hk - 1) + 1e-6).all()
        assert (off[..., 1].abs() <= 2.0 * 2 / (Wk - 1) + 1e-6).all()
        assert s(x).shape == (2, 8, Hk, Wk)


def test_lam_single_channel_moves_along_the_diagonal_and_two_channels_do_not():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16)
    ratios = {}
    for channels in (1, 2):
        s = DeformableSampler(dim=8, offset_channels=channels)
        with torch.no_grad():
            pos, ref = s.sampling_points(x)
        inside = (pos.abs() < 1 - 1e-6).all(-1)          # points the clamp did not move
        off = (pos - ref)[inside]
        ratios[channels] = off[:, 0] / off[:, 1]
    assert len(ratios[1]) > 4
    assert torch.allclose(ratios[1], torch.ones_like(ratios[1]), atol=1e-3)   # Hk == Wk: equal steps
    assert (ratios[2] - 1).abs().max() > 0.1


def test_lam_guards_tiny_grids():
    s = DeformableSampler(dim=4, kernel_size=4, stride=4)
    out = s(torch.randn(1, 4, 4, 4))          # Hk = Wk = 1
    assert out.shape == (1, 4, 1, 1) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="LAM_KERNEL"):
        LocalAlignment(dim=4, grid=(8, 2))


def test_missing_modality_changes_only_what_it_should(tiny_cfg):
    from engine import apply_missing
    x = images(2)
    y = apply_missing(x, "rt")
    assert not y["RGB"].any() and not y["TI"].any() and torch.equal(y["NI"], x["NI"])
    with pytest.raises(ValueError, match="TEST.MISS"):
        apply_missing(x, "q")


def test_quick_gelu_matches_autograd_reference():
    from modeling.backbone import QuickGELU
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(QuickGELU(), (x,))
    y = torch.randn(4, 9, requires_grad=True)
    ref = y * torch.sigmoid(1.702 * y)
    assert torch.allclose(QuickGELU()(y), ref)


@pytest.mark.parametrize("backbone", ["vit_custom", "vit_small_patch16_dinov3"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_cfg, backbone):
    """MODEL.GRAD_CHECKPOINT recomputes each block in the backward: same loss terms and gradients, stochastic
    depth included (the recomputation replays the random state)."""
    extra = [] if backbone == "vit_custom" else ["MODEL.TRANSFORMER_TYPE", backbone, "SOLVER.BACKBONE_LR", "1e-5",
                                                 "INPUT.SIZE_TRAIN", "[128,64]", "INPUT.SIZE_TEST", "[128,64]"]
    results = []
    for ck in ("no", "yes"):
        cfg = tiny_cfg("MODEL.GRAD_CHECKPOINT", ck, "MODEL.DROP_PATH", "0.2", *extra)
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=4, num_cameras=3).train()
        torch.manual_seed(1)
        x = images(4, *cfg.INPUT.SIZE_TRAIN)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = model(x, cam_label=torch.tensor([0, 1, 2, 0]))
        losses = build_loss(cfg)(out, torch.tensor([0, 0, 1, 1]))
        sum(losses.values()).backward()
        results.append(({k: v.item() for k, v in losses.items()},
                        {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, sum(saved)))
    (plain, g_plain, kept_plain), (ck, g_ck, kept_ck) = results
    assert kept_ck < 0.7 * kept_plain  # the blocks' activations are not kept for the backward
    assert plain == pytest.approx(ck, rel=1e-6, abs=1e-7)
    assert g_plain.keys() == g_ck.keys() and any("blocks" in n for n in g_ck)
    for n in g_plain:
        assert torch.allclose(g_plain[n], g_ck[n], rtol=1e-5, atol=1e-7), n
