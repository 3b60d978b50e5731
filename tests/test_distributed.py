import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT, TINY


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(synth_root, tmp_path):
    out, rec = tmp_path / "out", tmp_path / "rec"
    rec.mkdir()
    env = dict(os.environ, SIGNAL_TEST_RECORD_DIR=str(rec), OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tests", "ddp_worker.py"),
           *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCHS", "2",
           "SOLVER.EVAL_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2"]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    seen = [json.load(open(rec / f"seen{i}.json")) for i in range(2)]
    assert seen[0] and seen[1]
    # Each epoch the ranks take disjoint identities from the same global batches.
    assert len(seen[0]) == len(seen[1])
    per_epoch = len(seen[0]) // 2
    for e in range(2):
        a, b = seen[0][e * per_epoch:(e + 1) * per_epoch], seen[1][e * per_epoch:(e + 1) * per_epoch]
        assert not set(a) & set(b)
    w0, w1 = torch.load(rec / "rank0.pt"), torch.load(rec / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # Only rank 0 writes logs and checkpoints; metrics come from features gathered across ranks.
    log = open(out / "train_log.txt").read()
    assert "Validation epoch 2" in log and (out / "last.pth").exists() and (out / "best.pth").exists()
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    # test.py under torchrun: features gathered from both ranks, one result file written by rank 0.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "test.py"), *TINY, "DATASETS.ROOT_DIR",
           synth_root, "OUTPUT_DIR", str(out), "TEST.WEIGHT", str(out / "best.pth")]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    results = list(out.glob("test_*.json"))
    best = torch.load(out / "best.pth", weights_only=False)
    assert len(results) == 1 and json.load(open(results[0]))["mAP"] == best["metrics"]["mAP"]


def torchrun(tmp_path, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tests", "dist_worker.py"), *args]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, synth_root):
    """dist_worker.py's checks, run once on two processes: {rank: results}."""
    d = tmp_path_factory.mktemp("two_ranks")
    torchrun(d, str(d), *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(d))
    return {rank: json.load(open(d / f"rank{rank}.json")) for rank in range(2)}


def test_evaluation_gathers_features_through_a_cuda_process_group(tiny_cfg, two_ranks):
    """As on CUDA, the group serves CUDA tensors through the NCCL slot (gloo registered for 'cuda' alone stands
    in for NCCL, refusing CPU tensors as NCCL does) and CPU tensors through gloo: evaluation, which gathers its
    features on the CPU, gives the single-process metrics."""
    from data import build_test_dataloader
    from engine import evaluate_model
    from modeling import build_model
    cfg = tiny_cfg()
    loader, num_query, _ = build_test_dataloader(cfg)
    torch.manual_seed(0)
    single, _ = evaluate_model(cfg, build_model(cfg, 6, 3), loader, num_query, torch.device("cpu"), progress=False)
    for rank in range(2):
        got = two_ranks[rank]["eval"]
        assert "No backend type associated with device type cpu" in got["cuda_only_group"]
        assert got["metrics"] == {k: v for k, v in single.items() if k != "eval_seconds"}


@pytest.mark.parametrize("gather", [True, False])
def test_ddp_step_with_gathered_embeddings_equals_the_global_batch_step(tiny_cfg, two_ranks, gather):
    """Two ranks, each with its own identities of a P x K batch: with SOLVER.GATHER_EMBEDDINGS the loss terms
    and gradients equal one process's on the whole batch; without, triplet mining and GAM see half of it."""
    from .dist_worker import global_batch, training_terms
    cfg = tiny_cfg("SOLVER.GATHER_EMBEDDINGS", "yes" if gather else "no")
    losses, grads = training_terms(cfg, *global_batch(cfg))
    got = two_ranks[0]["ddp_step"]["yes" if gather else "no"]
    assert set(got["losses"]) == set(losses) and set(got["grads"]) == set(grads)
    gathered = [k for k in losses if k.startswith("tri_") or k == "gam"]
    equal = {k: abs(got["losses"][k] - losses[k].item()) <= 1e-5 * max(1.0, abs(losses[k].item())) for k in losses}
    if not gather:  # the control: per-rank mining and contrast give other values
        assert not all(equal[k] for k in gathered), (got["losses"], losses)
        return
    assert all(equal.values()), (got["losses"], {k: v.item() for k, v in losses.items()})
    for k, g in grads.items():
        assert torch.allclose(torch.tensor(got["grads"][k]), g.flatten(), rtol=1e-4, atol=1e-6), k


def test_each_rank_resumes_its_own_random_state(two_ranks):
    got = [two_ranks[rank]["rng"] for rank in range(2)]
    assert got[0]["expected"] != got[1]["expected"]  # the ranks' streams differ (seed + rank) ...
    assert all(g["resumed"] == g["expected"] for g in got)  # ... and each continues its own after a resume


def test_each_rank_evaluates_its_share_with_its_share_of_the_workers(monkeypatch):
    from torch.utils.data import DataLoader

    from engine.inference import _shard
    from utils import comm
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    shard = _shard(DataLoader(list(range(10)), batch_size=4, num_workers=2))
    assert list(shard.dataset) == [1, 3, 5, 7, 9] and shard.num_workers == 1
    assert _shard(DataLoader(list(range(10)), batch_size=4, num_workers=0)).num_workers == 0


def test_an_error_on_rank_0_alone_stops_every_rank_with_the_same_line(tmp_path):
    """Rank 0 alone checks the run folder: its error reaches every rank before any collective, so each rank
    prints the same one line and no rank is left waiting in gloo (no hang, no connection tracebacks)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"x")                       # a run is already there, and no --resume
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "train.py"), *TINY, "OUTPUT_DIR", str(out)]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode != 0 and len(lines) == 2 and lines[0] == lines[1], r.stderr[-4000:]
    assert "already holds a training run" in lines[0] and lines[0].count("error: ") == 1
    assert "gloo" not in r.stderr and "Connection closed" not in r.stderr, r.stderr[-4000:]
