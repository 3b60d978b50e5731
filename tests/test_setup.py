"""Start-up: device resolution (never a silent multi-day CPU run) and the mixed-precision scaler."""
import os

import pytest
import torch

from config import load_config
from engine import amp_mode, make_grad_scaler
from engine.setup import DeviceError, resolve_device

from .conftest import ROOT, TINY
from .helpers import python

SIGNAL_201 = os.path.join(ROOT, "configs", "RGBNT201", "Signal.yml")


def test_auto_device_without_cuda_refuses_a_full_size_training_run(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(SIGNAL_201)
    assert cfg.MODEL.DEVICE == "auto"
    with pytest.raises(DeviceError, match="no usable CUDA GPU.*MODEL.DEVICE cpu"):
        resolve_device(cfg, training=True)
    assert resolve_device(cfg, training=False).type == "cpu"  # evaluation goes on, loudly
    assert "no usable CUDA GPU" in caplog.text
    assert resolve_device(load_config(SIGNAL_201, ["MODEL.DEVICE", "cpu"]), training=True).type == "cpu"
    assert resolve_device(load_config("", TINY[:-2] + ["MODEL.DEVICE", "auto"]), training=True).type == "cpu"
    with pytest.raises(DeviceError, match="MODEL.DEVICE='cuda'"):
        resolve_device(load_config(SIGNAL_201, ["MODEL.DEVICE", "cuda"]))


def test_train_cli_stops_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    r = python(os.path.join(ROOT, "train.py"), "--config_file", SIGNAL_201, "OUTPUT_DIR", out, cwd=tmp_path, env=env,
               expect=2)
    assert r.stderr.startswith("error: MODEL.DEVICE auto found no usable CUDA GPU") and "MODEL.DEVICE cpu" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_grad_scaler_only_for_fp16_and_amp_on_the_cpu_only_on_request(tiny_cfg):
    cpu = torch.device("cpu")
    assert amp_mode(tiny_cfg(), cpu) == "none" and amp_mode(tiny_cfg(), torch.device("cuda")) == "fp16"
    assert amp_mode(tiny_cfg("SOLVER.AMP_ON_CPU", "yes", "SOLVER.AMP", "bf16"), cpu) == "bf16"
    assert make_grad_scaler(cpu, "none") is None
    assert make_grad_scaler(torch.device("cuda"), "bf16") is None
    assert make_grad_scaler(torch.device("cuda"), "none") is None


def test_old_torch_with_numpy_2_is_a_clear_error(monkeypatch):
    import numpy as np

    from engine.setup import SetupError, check_packages
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu121")
    monkeypatch.setattr(np, "__version__", "2.1.0")
    with pytest.raises(SetupError, match="numpy<2"):
        check_packages()
    monkeypatch.setattr(np, "__version__", "1.26.4")
    check_packages()
    monkeypatch.setattr(torch, "__version__", "2.4.0")
    monkeypatch.setattr(np, "__version__", "2.1.0")
    check_packages()


def test_cuda_without_a_gpu_is_one_line_on_the_command_line(tmp_path):
    from .conftest import TINY
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    r = python(os.path.join(ROOT, "train.py"), *TINY[:-2], "MODEL.DEVICE", "cuda", "OUTPUT_DIR", tmp_path / "run",
               cwd=tmp_path, env=env, expect=2)
    assert r.stderr.startswith("error: MODEL.DEVICE='cuda' but no usable CUDA GPU")
    assert "Traceback" not in r.stderr


def test_a_full_disk_is_an_error_naming_the_file(tmp_path, monkeypatch):
    from utils.checkpoint import OutputError, atomic_save

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    path = tmp_path / "last.pth"
    path.write_bytes(b"previous checkpoint")
    with pytest.raises(OutputError, match=f"cannot write {path}: .*file write failed"):
        atomic_save({"x": 1}, str(path))
    assert path.read_bytes() == b"previous checkpoint" and os.listdir(tmp_path) == ["last.pth"]


def fake_gpus(monkeypatch, count=2, capability=(7, 0), name="Tesla V100-SXM2-16GB"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_bf16_on_a_gpu_without_bfloat16_is_refused_naming_it(monkeypatch):
    fake_gpus(monkeypatch)
    with pytest.raises(DeviceError, match=r"SOLVER.AMP bf16.*Tesla V100-SXM2-16GB, compute capability 7.0"):
        resolve_device(load_config(SIGNAL_201, ["SOLVER.AMP", "bf16"]), training=True)
    assert resolve_device(load_config(SIGNAL_201), training=True) == torch.device("cuda:0")  # fp16 is fine
    fake_gpus(monkeypatch, capability=(8, 0), name="NVIDIA A100")
    assert resolve_device(load_config(SIGNAL_201, ["SOLVER.AMP", "bf16"]), training=True).type == "cuda"


def test_torchrun_gives_each_process_its_own_gpu(monkeypatch):
    fake_gpus(monkeypatch, capability=(9, 0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for dev in ("auto", "cuda"):
        assert resolve_device(load_config(SIGNAL_201, ["MODEL.DEVICE", dev]), local_rank=1) == torch.device("cuda:1")
    with pytest.raises(DeviceError, match="all 2 torchrun processes on one GPU.*CUDA_VISIBLE_DEVICES"):
        resolve_device(load_config(SIGNAL_201, ["MODEL.DEVICE", "cuda:0"]), local_rank=1)
    with pytest.raises(DeviceError, match="cuda:2 does not exist.*--nproc_per_node"):
        resolve_device(load_config(SIGNAL_201, ["MODEL.DEVICE", "cuda"]), local_rank=2)
    assert resolve_device(load_config(SIGNAL_201, ["MODEL.DEVICE", "cpu"]), local_rank=1).type == "cpu"


def test_process_group_backend_serves_cpu_tensors_on_cuda():
    from utils import comm
    assert comm.process_group_backend("cuda") == "cpu:gloo,cuda:nccl"
    assert comm.process_group_backend("cpu") == "gloo"


def test_amp_on_cpu_fp16_needs_torch_2_3(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu121")
    cfg = load_config("", TINY + ["SOLVER.AMP_ON_CPU", "yes"])
    with pytest.raises(DeviceError, match="torch >= 2.3"):
        resolve_device(cfg, training=True)
    assert resolve_device(load_config("", TINY + ["SOLVER.AMP_ON_CPU", "yes", "SOLVER.AMP", "bf16"])).type == "cpu"


def test_every_user_error_has_one_base():
    """One hierarchy: each error about the user's input derives from SignalError, which run_cli (train.py,
    test.py and every tool) prints as one line with exit code 2."""
    from data.datasets import DatasetError
    from engine.rundir import RunFolderError
    from engine.trainer import NonFiniteLossError
    from modeling.weights import WeightsError
    from utils.checkpoint import CheckpointError, OutputError
    from utils.comm import OtherRankError
    from utils.errors import SetupError, SignalError, UsageError
    for cls in (DatasetError, RunFolderError, NonFiniteLossError, WeightsError, CheckpointError, OutputError,
                OtherRankError, SetupError, DeviceError, UsageError):
        assert issubclass(cls, SignalError), cls
    # tools exit with code 2 on a user error: tests/test_tools.py::test_tool_errors_are_one_line
