"""Each paper-vs-official switch changes what it should and nothing else."""
import torch

from modeling import build_model

from .conftest import images


def _pair(tiny_cfg, key, value):
    torch.manual_seed(0)
    a = build_model(tiny_cfg(), 4, 3)
    torch.manual_seed(0)
    b = build_model(tiny_cfg(key, value), 4, 3)
    return a, b


def _train_outputs(model):
    model.train()
    torch.manual_seed(1)
    return model(images(4), cam_label=torch.tensor([0, 1, 2, 0]))


def test_sim_mask_switch_changes_only_the_sim_head(tiny_cfg):
    a, b = _pair(tiny_cfg, "MODEL.SIM_MASK_UNSELECTED", "yes")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict(a.state_dict())
    oa, ob = _train_outputs(a), _train_outputs(b)
    assert torch.equal(oa["heads"]["global"]["feat"], ob["heads"]["global"]["feat"])
    assert torch.equal(oa["gam"], ob["gam"]) and torch.equal(oa["lam"], ob["lam"])
    assert not torch.allclose(oa["heads"]["sim"]["feat"], ob["heads"]["sim"]["feat"])


def test_lam_channel_switch_changes_only_the_offset_head(tiny_cfg):
    a, b = _pair(tiny_cfg, "MODEL.LAM_OFFSET_CHANNELS", "2")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = sorted(k for k in sa if sa[k].shape != sb[k].shape)
    assert differ == [f"lam.samplers.{m}.conv_offset.4.weight" for m in ("NI", "RGB", "TI")]
    state = {k: v for k, v in sa.items() if k not in differ}
    for k in differ:
        state[k] = sa[k].repeat(2, 1, 1, 1)          # both channels = the single official channel
    b.load_state_dict(state)
    oa, ob = _train_outputs(a), _train_outputs(b)
    assert torch.equal(oa["heads"]["sim"]["feat"], ob["heads"]["sim"]["feat"])
    # Two identical channels reproduce the broadcast single channel exactly.
    assert torch.allclose(oa["lam"], ob["lam"], atol=1e-7)
    with torch.no_grad():
        b.lam.samplers["RGB"].conv_offset[4].weight[1].mul_(-1)
    assert not torch.allclose(oa["lam"], _train_outputs(b)["lam"])
    a.eval(), b.eval()
    x, cams = images(2), torch.tensor([0, 1])
    assert torch.equal(a(x, cam_label=cams), b(x, cam_label=cams))   # LAM never touches the test feature


def test_augmentation_switch_does_not_touch_the_model(tiny_cfg):
    a, b = _pair(tiny_cfg, "INPUT.SHARED_AUG_PARAMS", "yes")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
