import json
import os
import socket
import subprocess
import sys

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
