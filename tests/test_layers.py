import pytest
import torch
import torch.nn.functional as F

from layers import ReIDLoss, TripletLoss, gram_volume
from utils.versions import torch_version


def test_gram_volume_matches_independent_determinant():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    V = gram_volume(a, b, c)
    for i in range(5):
        for j in range(5):
            M = torch.stack([a[i], b[j], c[j]])
            ref = torch.linalg.det(M @ M.T).abs().sqrt()
            assert V[i, j].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)


def test_gram_volume_zero_for_aligned_and_one_for_orthonormal():
    x = F.normalize(torch.randn(4, 16), dim=1)
    assert gram_volume(x, x, x).diagonal().max().item() < 1e-4
    e = torch.eye(3)
    assert gram_volume(e[:1], e[1:2], e[2:3]).item() == pytest.approx(1.0, abs=1e-6)


def test_gram_volume_is_differentiable_at_zero():
    x = F.normalize(torch.randn(3, 8), dim=1).requires_grad_()
    gram_volume(x, x, x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("margin", [None, 0.3])
def test_triplet_batch_hard(margin):
    feat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 4.0]])
    target = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap = 1, d_an = 3; anchor 1: 1, sqrt(10); anchor 2: 1, 3; anchor 3: 1, 4
    d_ap = torch.tensor([1.0, 1.0, 1.0, 1.0])
    d_an = torch.tensor([3.0, 10 ** 0.5, 3.0, 4.0])
    ref = F.softplus(d_ap - d_an).mean() if margin is None else F.relu(d_ap - d_an + margin).mean()
    assert TripletLoss(margin)(feat, target).item() == pytest.approx(ref.item(), rel=1e-5)


def test_signal_loss_names_and_weights():
    outputs = {"heads": {"global": {"score": torch.randn(4, 3), "feat": torch.randn(4, 6)}},
               "gam": torch.tensor(2.0), "lam": torch.tensor(4.0)}
    target = torch.tensor([0, 0, 1, 1])
    losses = ReIDLoss(id_weight=0.5, triplet_weight=2.0, term_weights={"gam": 0.1, "lam": 0.25})(outputs, target)
    assert set(losses) == {"id_global", "tri_global", "gam", "lam"}
    assert losses["gam"].item() == pytest.approx(0.2) and losses["lam"].item() == pytest.approx(1.0)
    ce = F.cross_entropy(outputs["heads"]["global"]["score"], target, label_smoothing=0.1)
    assert losses["id_global"].item() == pytest.approx(0.5 * ce.item(), rel=1e-5)


@pytest.mark.skipif(torch_version() < (2, 3), reason="CPU fp16 autocast needs torch >= 2.3")
@pytest.mark.parametrize("dim", [64, 512])
def test_gam_gradient_stays_finite_under_fp16_autocast_for_aligned_modalities(dim):
    """Modalities aligned as training makes them (mean tokens at cosine ~0.9999): with the official precision
    (fp16 Gram entries) the scaled backward of GAM is not finite, so a GradScaler skips the step and halves
    its scale; in fp32 outside autocast it is finite and the loss equals the official one to fp16 rounding."""
    from modeling import GlobalAlignment
    g = torch.Generator().manual_seed(0)
    patches = (torch.randn(32, 1, 16, dim, generator=g) + 0.01 * torch.randn(32, 3, 16, dim, generator=g))
    patches.requires_grad_()
    out = {}
    for official in (False, True):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = 0.2 * GlobalAlignment(official_precision=official)(patches.half())
        grad, = torch.autograd.grad(loss * 2.0 ** 14, patches)
        out[official] = loss.item(), bool(torch.isfinite(grad).all())
    assert out[False][1] and not out[True][1], out
    assert out[False][0] == pytest.approx(out[True][0], rel=0.02)
