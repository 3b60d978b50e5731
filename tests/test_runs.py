"""Run folders, resume and output files: nothing a run wrote is lost or silently mixed with another run."""
import json
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

from engine.rundir import RunFolderError, RunLock
from utils.checkpoint import CheckpointError

from .conftest import ROOT, TINY
from .helpers import python_commands, result_file
from .test_end_to_end import opts, run_interrupted_at_epoch_2, run_train_inprocess


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _epochs(out):
    return [json.loads(line)["epoch"] for line in open(os.path.join(out, "metrics.jsonl"))]


def _snapshot(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))
            if not f.startswith(".") and os.path.isfile(os.path.join(out, f))}


def test_a_fresh_run_into_a_finished_run_stops_before_writing(synth_root, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out), monkeypatch)
    before = _snapshot(out)
    with pytest.raises(RunFolderError, match="already holds a training run.*--resume.*--overwrite"):
        run_train_inprocess(opts(synth_root, out), monkeypatch)
    assert _snapshot(out) == before
    # --overwrite deletes the old run and starts again
    run_train_inprocess(["--overwrite"] + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    assert _epochs(out) == [1]
    import yaml
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["SOLVER"]["MAX_EPOCHS"] == 1


def test_a_second_run_into_a_locked_folder_stops(synth_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(str(out))
    try:
        with pytest.raises(RunFolderError, match=f"another run is writing to {out} \\(process {os.getpid()}"):
            run_train_inprocess(opts(synth_root, str(out)), monkeypatch)
        assert sorted(os.listdir(out)) == [".lock"]
    finally:
        lock.release()
    run_train_inprocess(opts(synth_root, str(out), "SOLVER.MAX_EPOCHS", "1"), monkeypatch)   # free again


def test_the_lock_goes_with_the_main_process_not_its_forked_workers(tmp_path):
    """After kill -9 of the main process its forked children (DataLoader workers) may live on for a while;
    they must not hold the run's lock, so an immediate --resume is not refused naming a dead process."""
    import signal
    import time
    script = ("import os, sys, time\n"
              "from engine.rundir import RunLock\n"
              f"lock = RunLock({str(tmp_path)!r})\n"
              "child = os.fork()\n"
              "if child == 0:\n"
              "    time.sleep(60); os._exit(0)\n"
              "print(child, flush=True)\n"
              "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    child = int(p.stdout.readline())
    try:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        time.sleep(0.2)
        os.kill(child, 0)                                   # the worker still lives
        RunLock(str(tmp_path)).release()                    # and the lock is free
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_process_is_refused_while_the_first_trains(synth_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from engine.rundir import RunLock; RunLock(sys.argv[2]); print('locked', flush=True);"
                               "time.sleep(60)", ROOT, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *opts(synth_root, str(out))],
                           capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
        assert r.returncode == 2 and f"error: another run is writing to {out} (process {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_resume_refuses_config_changes_unless_allowed_and_extends_the_schedule(synth_root, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out), monkeypatch)
    before = _snapshot(out)
    with pytest.raises(RunFolderError, match="SOLVER.MAX_EPOCHS: checkpoint 2, now 3(.|\n)*--allow-change SOLVER.MAX_EPOCHS"):
        run_train_inprocess(["--resume"] + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "3"), monkeypatch)
    assert _snapshot(out) == before
    # keys that change nothing about the run may differ
    run_train_inprocess(["--resume"] + opts(synth_root, out, "SOLVER.LOG_PERIOD", "1"), monkeypatch)
    run_train_inprocess(["--resume", "--allow-change", "SOLVER.MAX_EPOCHS"]
                        + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "3"), monkeypatch)
    assert _epochs(out) == [1, 2, 3]
    # epoch 3 ran at the LR of a 3-epoch schedule, as the log says, and equals an uninterrupted 3-epoch run's
    ref = str(tmp_path / "ref")
    run_train_inprocess(opts(synth_root, ref, "SOLVER.MAX_EPOCHS", "3"), monkeypatch)
    lrs = [json.loads(line)["lr"] for line in open(os.path.join(out, "metrics.jsonl"))]
    ref_lrs = [json.loads(line)["lr"] for line in open(os.path.join(ref, "metrics.jsonl"))]
    assert lrs[2] == ref_lrs[2] and lrs[1] != ref_lrs[1]
    assert "SOLVER.MAX_EPOCHS changed from 2 (checkpoint) to 3" in open(os.path.join(out, "train_log.txt")).read()


def test_resume_applies_an_allowed_weight_decay_change(synth_root, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    seen = {}
    import engine.trainer as trainer
    original = trainer.train_step

    def spy(model, batch, loss_fn, optimizer, *args, **kwargs):
        seen["wd"] = {g["weight_decay"] for g in optimizer.param_groups}
        return original(model, batch, loss_fn, optimizer, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", spy)
    run_train_inprocess(["--resume", "--allow-change", "SOLVER.MAX_EPOCHS,SOLVER.WEIGHT_DECAY,SOLVER.WEIGHT_DECAY_BIAS"]
                        + opts(synth_root, out, "SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.WEIGHT_DECAY_BIAS", "0.05"),
                        monkeypatch)
    assert seen["wd"] == {0.05}


def test_resuming_a_finished_run_says_so_and_keeps_its_record(synth_root, tmp_path, monkeypatch, caplog):
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out), monkeypatch)
    before = {f: v for f, v in _snapshot(out).items() if f != "train_log.txt"}
    run_train_inprocess(["--resume"] + opts(synth_root, out), monkeypatch)
    after = {f: v for f, v in _snapshot(out).items() if f != "train_log.txt"}
    assert after == before
    assert "last_epoch" in json.loads(before["summary.json"])
    assert "is finished (epoch 2 of SOLVER.MAX_EPOCHS 2): nothing to train" in open(os.path.join(out, "train_log.txt")).read()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncate"])
def test_a_damaged_last_pth_is_named(synth_root, tmp_path, monkeypatch, content):
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    path = os.path.join(out, "last.pth")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2] if content == "truncate" else content)
    with pytest.raises(CheckpointError, match=f"cannot read the training checkpoint {path} .*truncated, damaged"):
        run_train_inprocess(["--resume"] + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)


def test_resume_without_a_checkpoint_and_contradicting_flags(synth_root, tmp_path, monkeypatch):
    with pytest.raises(RunFolderError, match="--resume: no checkpoint at"):
        run_train_inprocess(["--resume"] + opts(synth_root, str(tmp_path / "new")), monkeypatch)
    with pytest.raises(RunFolderError, match="contradict"):
        run_train_inprocess(["--resume", "--overwrite"] + opts(synth_root, str(tmp_path / "new")), monkeypatch)


def sigterm_mid_epoch_2(argv, monkeypatch, after=1):
    """Run train.py in-process and send it SIGTERM after iteration ``after`` of epoch 2: it must save and
    raise Preempted (what run_cli turns into exit code 75)."""
    import signal

    import engine.trainer as trainer
    from data.samplers import IdentitySampler
    from engine.preemption import Preempted
    seen = {"epoch": 0, "steps": 0}
    set_epoch, step = IdentitySampler.set_epoch, trainer.train_step

    def note_epoch(self, epoch, *args, **kwargs):
        seen.update(epoch=epoch, steps=0)
        set_epoch(self, epoch, *args, **kwargs)

    def step_then_signal(*args, **kwargs):
        out = step(*args, **kwargs)
        seen["steps"] += 1
        if seen["epoch"] == 2 and seen["steps"] == after:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(IdentitySampler, "set_epoch", note_epoch)
    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    with pytest.raises(Preempted) as info:
        run_train_inprocess(argv, monkeypatch)
    monkeypatch.setattr(IdentitySampler, "set_epoch", set_epoch)
    monkeypatch.setattr(trainer, "train_step", step)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # the handler is gone with the run
    return str(info.value)


def test_resume_with_dataloader_workers_is_bit_exact_after_a_stop_or_a_sigterm_mid_epoch(synth_root, tmp_path,
                                                                                          monkeypatch):
    """The augmentation is seeded per sample position, so 2 workers (persistent, resumed) reproduce the
    uninterrupted run, and that run equals one without workers. SIGTERM mid-epoch saves the state after the
    iteration; --resume continues from it with the same weights, records and random stream (drop path and
    random erasing are on). Resuming at an epoch boundary is covered by the other resume tests."""
    two = ["DATALOADER.NUM_WORKERS", "2"]
    run_train_inprocess(opts(synth_root, str(tmp_path / "full"), *two), monkeypatch)
    run_train_inprocess(opts(synth_root, str(tmp_path / "zero")), monkeypatch)
    term = str(tmp_path / "term")
    message = sigterm_mid_epoch_2(opts(synth_root, term, *two), monkeypatch)
    assert re.fullmatch(r"stopped by SIGTERM: saved epoch 2, iteration 1 of \d+ to .*last\.pth; continue with "
                        r"--resume", message), message
    saved = torch.load(os.path.join(term, "last.pth"), weights_only=False)
    assert saved["epoch"] == 1 and saved["partial"]["iterations"] == 1 and _epochs(term) == [1]
    assert "Stopped by SIGTERM" in open(os.path.join(term, "train_log.txt")).read()
    run_train_inprocess(["--resume"] + opts(synth_root, term, *two), monkeypatch)
    full = torch.load(tmp_path / "full" / "last.pth", weights_only=False)
    for run in ("zero", "term"):
        other = torch.load(tmp_path / run / "last.pth", weights_only=False)
        for k in full["model"]:
            assert torch.equal(full["model"][k], other["model"][k]), (run, k)
        if run != "zero":
            for a, b in zip(full["optimizer"]["state"].values(), other["optimizer"]["state"].values()):
                assert all(torch.equal(a[n], b[n]) for n in a), run
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}  # noqa: E731
    records = lambda run: [strip(json.loads(line)) for line in open(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    assert records("term") == records("full")                     # epoch 2's loss means included
    assert "continuing after iteration 1 of" in open(os.path.join(term, "train_log.txt")).read()


def test_a_mid_epoch_checkpoint_refuses_a_batch_order_change(synth_root, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    sigterm_mid_epoch_2(opts(synth_root, out), monkeypatch)
    from engine.setup import SetupError
    with pytest.raises(SetupError, match=r"saved mid-epoch \(epoch 2, after iteration 1\) and SOLVER.SEED changed"):
        run_train_inprocess(["--resume", "--allow-change", "SOLVER.SEED"] + opts(synth_root, out, "SOLVER.SEED", "5"),
                            monkeypatch)


def test_stop_and_ctrl_c_end_in_one_line(tmp_path, capsys):
    """run_cli: a stop signal's Preempted exits with 75, Ctrl-C with 130; each prints one line saying what
    was saved."""
    from engine.preemption import PREEMPTED_EXIT_CODE, Interrupted, Preempted
    from engine.setup import run_cli

    def preempted():
        raise Preempted("stopped by SIGUSR1: saved epoch 3, iteration 7 of 40 to out/last.pth; continue with --resume")

    def interrupted():
        raise Interrupted({"path": "out/last.pth", "epoch": 3, "iteration": 0})

    for fn, code, line in [(preempted, PREEMPTED_EXIT_CODE, "stopped by SIGUSR1: saved epoch 3, iteration 7"),
                           (interrupted, 130, "interrupted (Ctrl-C): out/last.pth holds epoch 3; continue with "
                                              "--resume")]:
        with pytest.raises(SystemExit) as info:
            run_cli(fn)
        err = capsys.readouterr().err.strip()
        assert info.value.code == code and err.startswith(line) and len(err.splitlines()) == 1, err


def test_a_crash_during_evaluation_loses_no_epoch(synth_root, tmp_path, monkeypatch):
    run_train_inprocess(opts(synth_root, str(tmp_path / "full")), monkeypatch)
    import engine.hooks as hooks
    original = hooks.evaluate_model
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    out = str(tmp_path / "cut")
    monkeypatch.setattr(hooks, "evaluate_model", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_train_inprocess(opts(synth_root, out), monkeypatch)
    state = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    assert state["epoch"] == 2 and state["pending_eval"] is True
    monkeypatch.setattr(hooks, "evaluate_model", original)
    run_train_inprocess(["--resume"] + opts(synth_root, out), monkeypatch)
    a = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    b = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]
    assert json.load(open(os.path.join(out, "summary.json")))["best"] == \
        json.load(open(tmp_path / "full" / "summary.json"))["best"]
    a, b = _weights(tmp_path / "full" / "best.pth"), _weights(os.path.join(out, "best.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_period_zero_evaluates_the_last_epoch_only(synth_root, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.EVAL_PERIOD", "0", "SOLVER.MAX_EPOCHS", "3"), monkeypatch)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert ["mAP" in r for r in records] == [False, False, True]


def test_outputs_follow_the_umask(synth_root, tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        out = str(tmp_path / "run")
        run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    finally:
        os.umask(old)
    for f in ("last.pth", "best.pth", "metrics.jsonl", "summary.json", "config.yaml"):
        assert stat.S_IMODE(os.stat(os.path.join(out, f)).st_mode) == 0o644, f


def test_cli_errors_are_one_line_and_reach_the_log(synth_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "run"
    blocked, missing, no_weight = python_commands(
        ([os.path.join(ROOT, "train.py"), *opts(synth_root, str(blocker / "run"))], 2),
        ([os.path.join(ROOT, "train.py"), *opts(synth_root, str(out), "MODEL.PRETRAIN_PATH", str(tmp_path / "missing.pth"))], 2),
        ([os.path.join(ROOT, "test.py"), *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out, "TEST.WEIGHT",
          out / "none.pth"], 2), cwd=tmp_path)[0]
    assert blocked.startswith("error: ") and str(blocker) in blocked and len(blocked.splitlines()) == 1
    assert missing.startswith("error: ") and "missing.pth" in missing and len(missing.splitlines()) == 1
    assert "error: " in open(out / "train_log.txt").read() and "missing.pth" in open(out / "train_log.txt").read()
    assert no_weight.startswith("error: TEST.WEIGHT: no checkpoint at") and len(no_weight.splitlines()) == 1


def test_save_features_checks_its_folder_before_evaluating(synth_root, tmp_path, monkeypatch):
    import test as test_script
    from utils.checkpoint import OutputError
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = ["test.py", *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out, "TEST.WEIGHT",
            os.path.join(out, "best.pth"), "LOG.PROGRESS_BARS", "no", "--save-features"]
    evaluated = []
    real = test_script.evaluate_model
    monkeypatch.setattr(test_script, "evaluate_model", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    monkeypatch.setattr(sys, "argv", argv + [str(blocker / "f.npz")])
    with pytest.raises(OutputError, match="--save-features: cannot write to"):
        test_script.main()
    assert not evaluated                                     # refused before the evaluation ran
    monkeypatch.setattr(sys, "argv", argv + [str(tmp_path / "new" / "feats")])
    test_script.main()
    assert os.path.isfile(tmp_path / "new" / "feats.npz") and evaluated
    from engine.setup import SetupError
    from test import features_path
    with pytest.raises(SetupError, match="--save-features TEST.WEIGHT: that is a config key"):
        features_path("TEST.WEIGHT", None)                  # `--save-features TEST.WEIGHT x.pth` mistyped


def test_test_results_are_named_by_checkpoint_and_never_overwrite_the_run(synth_root, tmp_path, monkeypatch):
    import test as test_script
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    before = _snapshot(out)
    names = []
    for weight in ("best.pth", "last.pth"):
        monkeypatch.setattr(sys, "argv", ["test.py", *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out,
                                          "TEST.WEIGHT", os.path.join(out, weight)])
        test_script.main()
        names.append(os.path.basename(result_file(out, f"test_{weight[:-4]}_Synthetic")))
    after = _snapshot(out)
    assert all(after[f] == before[f] for f in before if f not in ("test_log.txt",))
    assert set(after) - set(before) == set(names) | ({"test_log.txt"} - set(before))
    other = tmp_path / "eval"
    monkeypatch.setattr(sys, "argv", ["test.py", *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(other),
                                      "TEST.WEIGHT", os.path.join(out, "best.pth"), "TEST.MISS", "r"])
    test_script.main()
    result_file(str(other), "test_run-best_Synthetic_miss-r")


def test_result_names_change_with_every_setting_that_can_change_a_figure(tiny_cfg, tmp_path):
    """Another camera rule, data folder, custom folder, normalisation or precision is another file; batch size,
    workers and device are not."""
    from test import result_name
    base = ["TEST.WEIGHT", str(tmp_path / "best.pth"), "OUTPUT_DIR", str(tmp_path)]
    name = result_name(tiny_cfg(*base))
    assert name.startswith("test_best_Synthetic_")
    for key, value in [("TEST.CAMERA_EMBEDDING", "mean"), ("DATASETS.ROOT_DIR", str(tmp_path / "other")),
                       ("DATASETS.CUSTOM.FOLDER", "B"), ("INPUT.PIXEL_STD", "[0.2,0.2,0.2]"), ("SOLVER.AMP", "bf16"),
                       ("TEST.FEAT_NORM", "no"), ("DATASETS.SKIP_UNPAIRED", "yes")]:
        assert result_name(tiny_cfg(*base, key, value)) != name, key
    for key, value in [("TEST.IMS_PER_BATCH", "3"), ("DATALOADER.NUM_WORKERS", "1"), ("MODEL.DEVICE", "cpu"),
                       ("SOLVER.BASE_LR", "0.1"), ("LOG.TENSORBOARD", "no")]:
        assert result_name(tiny_cfg(*base, key, value)) == name, key
    import os.path as op
    same_folder = tiny_cfg(*base, "DATASETS.ROOT_DIR", op.join(tiny_cfg().DATASETS.ROOT_DIR, "x", ".."))
    assert result_name(same_folder) == name                 # one folder, two spellings: one result


def test_a_checkpoint_without_records_keeps_metrics_jsonl(synth_root, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    run_interrupted_at_epoch_2(opts(synth_root, out), monkeypatch)
    path = os.path.join(out, "last.pth")
    state = torch.load(path, weights_only=False)
    del state["records"], state["pending_eval"]                  # as written by an earlier version
    torch.save(state, path)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:     # and a line of an epoch it did not save
        f.write(json.dumps({"epoch": 2, "loss": 1.0}) + "\n")
    run_train_inprocess(["--resume"] + opts(synth_root, out), monkeypatch)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2] and "mAP" in records[0] and records[1]["loss"] != 1.0


def test_last_pth_is_written_once_per_epoch_and_a_finished_evaluation_is_not_repeated(synth_root, tmp_path,
                                                                                       monkeypatch):
    """last.pth (about 1 GiB with Adam's moments for ViT-B) is written once per epoch, before the evaluation;
    the evaluation's results go to metrics.jsonl, and a resume after them does not evaluate again."""
    import engine.hooks as hooks
    writes = []
    original_save = hooks.atomic_save
    monkeypatch.setattr(hooks, "atomic_save", lambda obj, path: (writes.append(os.path.basename(path)),
                                                                    original_save(obj, path)))
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out), monkeypatch)
    assert writes.count("last.pth") == 2  # 2 epochs, both evaluated
    state = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    assert state["pending_eval"] is True and _epochs(out) == [1, 2]
    assert "MODEL:" in torch.load(os.path.join(out, "best.pth"), weights_only=False)["config"]

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(hooks, "evaluate_model", no_evaluation)
    monkeypatch.setattr("train.evaluate_model", no_evaluation)
    run_train_inprocess(["--resume"] + opts(synth_root, out), monkeypatch)   # finished: nothing to do
    assert "is finished" in open(os.path.join(out, "train_log.txt")).read()


def test_resume_refuses_shape_changes_up_front_and_keeps_config_yaml(synth_root, tmp_path, monkeypatch):
    """A key that changes the model's tensors cannot be allowed on --resume (the checkpoint would not load):
    refused before anything is written. config.yaml is rewritten only once a resume has worked; a checkpoint
    without a stored config, or with keys this version does not know, resumes with a warning."""
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    before = _snapshot(out)
    with pytest.raises(RunFolderError, match=r"MODEL.SIGNAL.USE_LAM \(MODEL.USE_LAM\) changed against "
                                             r".*last.pth \(True -> False\).*MODEL.PRETRAIN_PATH"):
        run_train_inprocess(["--resume", "--allow-change", "all"] + opts(synth_root, out, "MODEL.USE_LAM", "no"),
                            monkeypatch)
    assert _snapshot(out) == before
    # a finished run resumed with nothing to train leaves config.yaml as it was
    config = open(os.path.join(out, "config.yaml")).read()
    run_train_inprocess(["--resume", "--allow-change", "SOLVER.BASE_LR"]
                        + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1", "SOLVER.BASE_LR", "0.002"), monkeypatch)
    assert open(os.path.join(out, "config.yaml")).read() == config
    # stored configs that cannot be checked are said so
    path = os.path.join(out, "last.pth")
    state = torch.load(path, weights_only=False)
    state["config"] = state["config"].replace("MODEL:\n", "MODEL:\n  OLD_SWITCH: true\n", 1)
    torch.save(state, path)
    run_train_inprocess(["--resume"] + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    log = lambda: open(os.path.join(out, "train_log.txt")).read()  # noqa: E731
    assert "config keys this version does not know (MODEL.OLD_SWITCH)" in log()
    del state["config"]
    torch.save(state, path)
    run_train_inprocess(["--resume"] + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    assert "stores no config" in log()


def test_resume_onto_data_with_another_identity_count_is_one_line(tiny_cfg):
    """A checkpoint of a model with 6 identities resumed into one built for 8 (the data moved to other
    identities): one line naming the cause, not a torch traceback."""
    from engine import resume_from
    from modeling import build_model
    from solver import build_optimizer, build_scheduler
    cfg = tiny_cfg()
    state = {"model": build_model(cfg, 6, 3).state_dict(), "optimizer": {}, "epoch": 1}
    model = build_model(cfg, 8, 3)
    optimizer = build_optimizer(cfg, model)
    with pytest.raises(CheckpointError, match=r"last.pth does not fit this run's model \(.*size mismatch.*\): "
                                              r"the data \(number of identities"):
        resume_from(state, model, optimizer, build_scheduler(cfg, optimizer), None, "out/last.pth")
