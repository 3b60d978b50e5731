"""Eval features after loading an official-layout checkpoint equal a transcription of the official
model's forward (per-modality encoder calls, per-sample selection loops, zeroed patches)."""
import pytest
import torch
import torch.nn.functional as F

from modeling import build_model, load_weights
from reference import official
from reference.official import official_state_dict

from .test_weights import CUSTOM, HEADS, OUT


@pytest.mark.parametrize("k", [3, 40])
def test_eval_features_equal_the_official_forward(tiny_cfg, tmp_path, k):
    torch.manual_seed(k)
    cfg = tiny_cfg(*CUSTOM, "MODEL.TOPK", str(k), "MODEL.SIM_HEADS", "8")
    state = official_state_dict(build_model(cfg, 5, 3))
    torch.save(state, tmp_path / "Signal_model.pth")
    model = load_weights(build_model(cfg, 5, 3), str(tmp_path / "Signal_model.pth")).eval()
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(3, 3, 64, 32, generator=g) for m in ("RGB", "NI", "TI")}
    cams = torch.tensor([2, 0, 1])
    with torch.no_grad():
        ours = model(x, cam_label=cams)
        sd = {kk: v.float() if v.is_floating_point() else v for kk, v in state.items()}
        ref = F.normalize(official.eval_features(sd, x, cams, k, HEADS, sim_heads=8), dim=1)
    assert ours.shape == ref.shape == (3, 6 * OUT)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
