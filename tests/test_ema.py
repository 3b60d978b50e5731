"""SOLVER.EMA_DECAY: the moving average of the weights, evaluated, saved and resumed bit-exactly."""
import os
import types

import pytest
import torch

from engine import EMA

from .test_end_to_end import opts, run_train_inprocess
from .test_runs import sigterm_mid_epoch_2


def test_the_average_follows_every_step_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    hook = EMA(0.9)
    hook.before_train(types.SimpleNamespace(unwrapped=model, records=[]))
    start = {k: v.clone() for k, v in hook.model.state_dict().items()}
    model.train()(torch.randn(4, 3))  # moves the running stats and num_batches_tracked
    with torch.no_grad():
        model[0].weight.add_(1.0)
    hook.after_step(None, {})
    now, ema = model.state_dict(), hook.model.state_dict()
    for k in ema:
        if ema[k].is_floating_point():
            assert torch.allclose(ema[k], 0.9 * start[k] + 0.1 * now[k]), k
        else:
            assert torch.equal(ema[k], now[k]), k
    assert not any(p.requires_grad for p in hook.model.parameters()) and not hook.model.training
    with pytest.raises(ValueError, match=r"SOLVER.EMA_DECAY expects a value in \(0, 1\)"):
        EMA(1.0)


def test_ema_runs_evaluate_the_average_and_resume_it_bit_exactly_mid_epoch(synth_root, tmp_path, monkeypatch):
    ema = ["SOLVER.EMA_DECAY", "0.9", "SOLVER.CHECKPOINT_PERIOD", "1"]
    full, term = str(tmp_path / "full"), str(tmp_path / "term")
    run_train_inprocess(opts(synth_root, full, *ema), monkeypatch)
    sigterm_mid_epoch_2(opts(synth_root, term, *ema), monkeypatch)
    stopped = torch.load(os.path.join(term, "last.pth"), weights_only=False)
    assert stopped["partial"]["iterations"] == 1 and set(stopped["hooks"]) == {"ema"}
    run_train_inprocess(["--resume"] + opts(synth_root, term, *ema), monkeypatch)
    load = lambda run, name: torch.load(os.path.join(run, name), weights_only=False)  # noqa: E731
    a, b = load(full, "last.pth"), load(term, "last.pth")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["hooks"]["ema"][k], b["hooks"]["ema"][k]), k
    # the average is what is evaluated and saved: the periodic checkpoints and best.pth hold it
    average, trained = a["hooks"]["ema"], a["model"]
    assert any(not torch.equal(average[k], trained[k]) for k in trained if trained[k].is_floating_point())
    epoch2, own = load(full, "Signal_2.pth")["model"], load(full, "ema.pth")
    assert all(torch.equal(epoch2[k], average[k]) and torch.equal(own["model"][k], average[k]) for k in average)
    assert own["epoch"] == 2 and own["meta"]["method"] == "Signal"
    best = load(full, "best.pth")
    chosen = load(full, f"Signal_{best['epoch']}.pth")["model"]
    assert all(torch.equal(best["model"][k], chosen[k]) for k in chosen)
