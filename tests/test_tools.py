"""Smoke tests: every command under tools/ runs on the synthetic benchmark and writes its output."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from modeling import build_model
from utils.errors import UsageError

from .conftest import ROOT
from .helpers import newest_stack_only, python, python_commands

# Benchmarks, ablations and the timm-backbone runs of the visual tools train or build many models end to end;
# the tools' own code is the same on every torch, so they run on the newest supported stack only (the library
# code they call, and each tool on the small model, are tested on every stack).

TOOLS = os.path.join(ROOT, "tools")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, synth_root):
    from config import load_config

    from .conftest import TINY
    d = tmp_path_factory.mktemp("tools")
    cfg = load_config("", TINY + ["DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(d / "out"),
                                  "SOLVER.MAX_EPOCHS", "1"])
    cfg_path = d / "tiny.yml"
    cfg_path.write_text(cfg.dump())
    from data import build_dataloaders
    _, _, _, num_classes, num_cameras = build_dataloaders(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes, num_cameras)
    weight = d / "model.pth"
    torch.save({"model": model.state_dict()}, weight)
    return d, str(cfg_path), str(weight)


def run(args, cwd):
    return python(*args, cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT)).stdout


def run_inprocess(args, cwd, monkeypatch):
    """A tool's ``main()`` in this process, as ``run`` would start it (no interpreter start-up): the tool
    file is loaded afresh, with its command line and working directory."""
    import importlib.util
    path = args[0]
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [path, *args[1:]])
    monkeypatch.syspath_prepend(TOOLS)
    spec.loader.exec_module(module)
    module.main()


@pytest.mark.parametrize("tool", ["vis_ranklist.py", "vis_tokens.py", "vis_offsets.py", "vis_cam.py"])
def test_visual_tools_write_images(tiny_setup, tool, monkeypatch):
    d, cfg, weight = tiny_setup
    out = d / (tool + ".png")
    run_inprocess([os.path.join(TOOLS, tool), "--config_file", cfg, "--weight", weight, "--output", str(out),
                   "--num-" + ("query" if tool == "vis_ranklist.py" else "samples"), "2"], d, monkeypatch)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200 and img.std() > 20  # drawn samples, not a blank page
    if tool == "vis_ranklist.py":  # each of the 2 queries' 5 results is framed green (a match) or red
        frames = (np.all(img == (0, 170, 0), -1) | np.all(img == (220, 0, 0), -1)).sum()
        assert frames >= 2 * 5 * 4 * 8, frames


def test_tools_write_to_output_dir_by_default(tiny_setup, monkeypatch):
    d, cfg, weight = tiny_setup
    run_inprocess([os.path.join(TOOLS, "vis_cam.py"), "--config_file", cfg, "--weight", weight, "--num-samples", "1"],
                  d, monkeypatch)
    assert sorted(os.listdir(d / "out")) == ["vis_cam.png"]  # OUTPUT_DIR/<tool>.png, nothing else
    assert Image.open(d / "out" / "vis_cam.png").width > 100


def test_vis_cam_heat_follows_the_gradient(tiny_cfg):
    """The Grad-CAM map lies in [0, 1] with a peak of 1 per image, on the patch grid."""
    sys.path.insert(0, TOOLS)
    from vis_cam import grad_cam

    from .conftest import images
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), 5, 3).eval()
    heat = grad_cam(model, images(2), torch.tensor([0, 1]))
    assert heat.shape == (2, 3, *model.backbone.grid)
    assert heat.min() >= 0 and torch.allclose(heat.flatten(2).amax(-1), torch.ones(2, 3))


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="optional scikit-learn not installed (requirements-extras.txt)")
def test_vis_tsne_writes_both_pictures(tiny_setup):
    d, cfg, weight = tiny_setup
    text = run([os.path.join(TOOLS, "vis_tsne.py"), "--config_file", cfg, "--weight", weight, "--output",
                str(d / "tsne.png")], d)
    assert Image.open(d / "tsne.png").width > 100 and Image.open(d / "tsne_modalities.png").width > 100
    assert "same sample" in text


def test_model_cost_prints_the_table(tiny_setup, tiny_cfg):
    d, cfg, _ = tiny_setup
    text = run([os.path.join(TOOLS, "model_cost.py"), "--config_file", cfg], d)
    cells = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| module") and not line.startswith("| FLOPs")}
    assert {"backbone", "SIM", "GAM", "LAM", "heads (BN + classifiers)", "total"} <= set(cells)
    assert 0 < float(cells["inference (eval feature)"]) < float(cells["training (forward + backward)"])
    sys.path.insert(0, TOOLS)
    from model_cost import parameter_rows
    model = build_model(tiny_cfg(), 6, 3)
    rows = parameter_rows(model)
    assert [r[0] for r in rows] == ["backbone", "SIM", "GAM", "LAM", "heads (BN + classifiers)", "total"]
    assert sum(r[1] for r in rows[:-1]) == rows[-1][1] == sum(p.numel() for p in model.parameters())


@newest_stack_only
def test_ablate_writes_table_and_curves(tiny_setup, tmp_path, monkeypatch):
    d, cfg, _ = tiny_setup
    text = run([os.path.join(TOOLS, "ablate.py"), "--configs", cfg, "--output", str(tmp_path / "abl"),
                "--runs-dir", str(tmp_path / "runs"), "SOLVER.MAX_EPOCHS", "2"], d)
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| tiny |" in table and "mAP" in text
    assert Image.open(tmp_path / "abl" / "tiny_curves.png").height > 300
    records = [json.loads(line) for line in open(tmp_path / "runs" / "tiny" / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    base = [sys.executable, os.path.join(TOOLS, "ablate.py"), "--configs", cfg, "--output", str(tmp_path / "abl"),
            "--runs-dir", str(tmp_path / "runs")]
    sys.path.insert(0, TOOLS)
    import ablate

    def refused(*extra):  # in this process (no interpreter start-up): the message ablate.py exits with
        argv = sys.argv
        sys.argv = base[1:] + list(extra)
        try:
            with pytest.raises((UsageError, SystemExit)) as e:
                ablate.main()
        finally:
            sys.argv = argv
        return str(e.value)

    before = (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text()
    # again into the same folders: refused before anything trains
    assert "already hold runs" in refused("SOLVER.MAX_EPOCHS", "2")
    assert (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text() == before
    # collecting with another config than the run's: refused, naming the key
    assert "SOLVER.MAX_EPOCHS: run 2, asked 3" in refused("--skip-training", "SOLVER.MAX_EPOCHS", "3")
    # --resume keeps the finished run and reports the same table
    assert run(base[1:] + ["--resume", "SOLVER.MAX_EPOCHS", "2"], d).count("| tiny |") == 1
    assert (tmp_path / "abl" / "ablation.md").read_text() == table
    # --compare: the method, its cost, step time and missing-modality mAP (test.py TEST.MISS all on best.pth)
    text = run(base[1:] + ["--skip-training", "--compare", "SOLVER.MAX_EPOCHS", "2"], d)
    row = next(line for line in (tmp_path / "abl" / "comparison.md").read_text().splitlines()
               if line.startswith("| tiny |")).split(" | ")
    assert row[1] == "Signal" and row[5].endswith(" M") and float(row[6]) > 0 and row[7].endswith(" ms")
    miss = json.load(open(glob.glob(str(tmp_path / "runs" / "tiny" / "test_best_Synthetic_miss-all_*.json"))[0]))
    assert row[8].rstrip(" |") == f"{100 * miss['average']['mAP']:.1f}" and "zero-filled" in text
    assert Image.open(tmp_path / "abl" / "comparison.png").width == 640
    # --allow-change goes to train.py with --resume (and only with it); a run stopped by a signal says so
    assert "only applies with --resume" in refused("--allow-change", "SOLVER.BASE_LR", "SOLVER.MAX_EPOCHS", "2")
    launched = []
    monkeypatch.setattr(ablate.subprocess, "run", lambda cmd: launched.append(cmd) or subprocess.CompletedProcess(
        cmd, ablate.PREEMPTED_EXIT_CODE))
    assert "stopped by a signal" in refused("--resume", "--allow-change", "SOLVER.BASE_LR", "SOLVER.MAX_EPOCHS", "2")
    assert launched[0][launched[0].index("--resume"):][:3] == ["--resume", "--allow-change", "SOLVER.BASE_LR"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="optional export dependencies not installed (requirements-export.txt)")
def test_export_onnx_matches_pytorch(tiny_setup):
    d, cfg, weight = tiny_setup
    text = run([os.path.join(TOOLS, "export_onnx.py"), "--config_file", cfg, "--weight", weight,
                "--output", str(d / "m.onnx")], d)
    assert "largest |onnxruntime - pytorch|" in text and os.path.isfile(d / "m.onnx")


@newest_stack_only
def test_benchmarks_run(tiny_setup):
    d, cfg, _ = tiny_setup
    text = run([os.path.join(TOOLS, "benchmark.py"), "--config_file", cfg, "--batch", "4", "--steps", "1",
                "--warmup", "0", "--data-root", str(d / "bench_data"), "--data-epochs", "1"], d)
    records = {r["figure"]: r for r in map(json.loads, (line for line in text.splitlines() if line.startswith("{")))}
    assert {"matmul_rate", "train_step_seconds", "train_flops_utilisation", "inference_samples_per_s",
            "peak_memory", "loader_triplets_per_s", "device_half_ms_per_batch", "data_workers_to_feed",
            "evaluation_seconds"} <= set(records)
    assert all(records[f]["value"] > 0 for f in ("matmul_rate", "train_step_seconds", "inference_samples_per_s",
                                                 "evaluation_seconds"))
    loader = [json.loads(line) for line in text.splitlines() if '"loader_triplets_per_s"' in line]
    settings = {(r["pipeline"].split(",")[0] + ("" if r["pipeline"].startswith("float") else r["pipeline"][5:]),
                 r["workers"]) for r in loader}
    ablations = {("uint8, files, torch's collate", 1)} | ({("uint8, files, PIL decode", 1)} if any(
        r.get("decoder", "PIL") != "PIL" for r in loader) else set())
    assert settings == {(p, w) for p in ("float32", "uint8, files", "uint8, cache") for w in (0, 1, 2)} | ablations
    assert all(r["value"] > 0 and r["cores_for_h100"] >= 1 and r["size"] == "64x32" for r in loader)
    ev = records["evaluation_seconds"]  # at the sizes the registry holds for the config's benchmark
    assert (ev["sizes_of"], ev["num_query"], ev["num_gallery"]) == ("Synthetic", 192, 192)
    text = run([os.path.join(TOOLS, "benchmark_reranking.py"), "--num-query", "50", "--num-gallery", "200",
                "--repeat", "1"], d)
    assert "re_ranking_seconds_best" in text and "re_ranking_peak_memory_gib" in text


@newest_stack_only
def test_benchmark_side_by_side_with_the_official_code(tiny_setup):
    """--official: both sides start from the same weights and batch (the tool stops if their first losses
    differ), every figure is printed for both, and the evaluations are identical."""
    d, cfg, _ = tiny_setup
    text = run([os.path.join(TOOLS, "benchmark.py"), "--config_file", cfg, "--batch", "8", "--steps", "1",
                "--warmup", "0", "--official", "--eval-size", "60", "240", "--eval-repeat", "1",
                "INPUT.SIZE_TRAIN", "[128,64]", "INPUT.SIZE_TEST", "[128,64]"], d)
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    sides = {(r["side"], r["keep_freed_memory"]) for r in records if r["figure"] == "train_step_seconds"}
    assert sides == {("official", False), ("ours", True), ("ours", False)}
    losses = {r["value"] for r in records if r["figure"] == "first_step_loss"}
    assert max(losses) - min(losses) < 1e-4 * max(losses)
    ev = next(r for r in records if r["figure"] == "evaluation_seconds")
    assert ev["identical_results"] and ev["official"] > 0
    rr = next(r for r in records if r["figure"] == "re_ranking_seconds")
    assert rr["max_abs_difference"] < 5e-3
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 7 and all(line.endswith("x |") for line in table[1:])
    # the official LAM needs a sampling grid of at least 2 x 2: a clear error, not a traceback
    r = python(os.path.join(TOOLS, "benchmark.py"), "--config_file", cfg, "--batch", "4", "--steps", "1", "--warmup",
               "0", "--official", cwd=d, expect=2, env=dict(os.environ, PYTHONPATH=ROOT))
    assert "sampling grid of at least 2 x 2" in r.stderr and "Traceback" not in r.stderr


def test_lr_schedule_prints_every_epoch_of_every_group(tmp_path):
    out = run([os.path.join(TOOLS, "lr_schedule.py"), "--config_file",
               os.path.join(ROOT, "configs", "MSVR310", "Signal.yml"), "--csv", str(tmp_path / "lr.csv")], tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 50
    epoch19, epoch20 = (line.split(" | ") for line in rows[18:20])
    assert float(epoch19[1]) == pytest.approx(5e-6) and float(epoch20[1]) == pytest.approx(5e-7)
    assert "classifiers.RGB.weight" in out
    assert len(open(tmp_path / "lr.csv").read().splitlines()) == 51


def test_tool_errors_are_one_line(tiny_setup):
    d, cfg, _ = tiny_setup
    (ranklist, schedule, cost), _ = python_commands(
        ([os.path.join(TOOLS, "vis_ranklist.py"), "--config_file", cfg, "--weight", d / "missing.pth", "--output",
          d / "x.png"], 2),
        ([os.path.join(TOOLS, "lr_schedule.py"), "--config_file", cfg, "SOLVER.MAX_EPOCHS", "0"], 2),
        # a benchmark without published sizes: model_cost.py asks for them (a usage error, not a traceback)
        ([os.path.join(TOOLS, "model_cost.py"), "--config_file", os.path.join(ROOT, "configs", "WMVeID863",
                                                                               "Signal.yml")], 2), cwd=d)
    assert ranklist.startswith("error: weights file not found:") and len(ranklist.splitlines()) == 1
    assert schedule.startswith("error: config: SOLVER.MAX_EPOCHS must be an integer >= 1") and len(schedule.splitlines()) == 1
    assert cost.startswith("error: model_cost.py: pass --num-classes and --num-cameras for DATASETS.NAMES WMVeID863")


def test_check_data_reports_the_splits_and_a_bad_file(tiny_setup, synth_root, tmp_path):
    import shutil
    d, cfg, _ = tiny_setup
    text = run([os.path.join(TOOLS, "check_data.py"), "--config_file", cfg], d)
    assert "decoded" in text and "files/s" in text and "queries have a true match" in text
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    victim = sorted((root).rglob("*.jpg"))[7]
    victim.write_bytes(b"garbage")
    r = python(os.path.join(TOOLS, "check_data.py"), "--config_file", cfg, "DATASETS.ROOT_DIR", root, cwd=d, expect=2,
               env=dict(os.environ, PYTHONPATH=ROOT))
    assert f"  {victim}: " in r.stderr


@pytest.fixture(scope="module")
def dinov3_setup(tmp_path_factory, synth_root):
    from config import load_config

    from .conftest import TINY
    d = tmp_path_factory.mktemp("dinov3")
    cfg = load_config("", TINY + ["DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", str(d / "out"),
                                  "MODEL.TRANSFORMER_TYPE", "vit_small_patch16_dinov3", "INPUT.SIZE_TRAIN", "[128,64]",
                                  "INPUT.SIZE_TEST", "[128,64]", "SOLVER.BACKBONE_LR", "1e-5", "MODEL.TOPK", "3"])
    (d / "dinov3.yml").write_text(cfg.dump())
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg, 6, 3, pretrained=False).state_dict()}, d / "model.pth")
    return d, str(d / "dinov3.yml"), str(d / "model.pth")


@newest_stack_only
@pytest.mark.parametrize("tool", ["vis_tokens.py", "vis_offsets.py", "vis_cam.py"])
def test_visual_tools_on_a_timm_backbone(dinov3_setup, tool, monkeypatch):
    d, cfg, weight = dinov3_setup
    run_inprocess([os.path.join(TOOLS, tool), "--config_file", cfg, "--weight", weight, "--num-samples", "1"], d,
                  monkeypatch)
    assert Image.open(d / "out" / tool.replace(".py", ".png")).width > 50


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="optional export dependencies not installed (requirements-export.txt)")
def test_export_onnx_on_a_timm_backbone(dinov3_setup):
    d, cfg, weight = dinov3_setup
    text = run([os.path.join(TOOLS, "export_onnx.py"), "--config_file", cfg, "--weight", weight], d)
    assert "largest |onnxruntime - pytorch|" in text and os.path.isfile(d / "out" / "export_onnx.onnx")


@newest_stack_only
def test_sweep_trains_the_grid_and_selects_on_validation(tiny_setup, tmp_path):
    """--sweep: one run per value, chosen by the held-out validation identities; the table also reports the
    test figures of each run's validation-selected epoch."""
    d, cfg, _ = tiny_setup
    base = [os.path.join(TOOLS, "ablate.py"), "--configs", cfg, "--output", str(tmp_path / "sweep"), "--runs-dir",
            str(tmp_path / "runs"), "--sweep", "SOLVER.BASE_LR", "1e-3,1e-5", "SOLVER.MAX_EPOCHS", "1"]
    sys.path.insert(0, TOOLS)
    import ablate
    argv = sys.argv
    sys.argv = base
    try:  # refused before anything trains (in this process: no interpreter start-up)
        with pytest.raises(UsageError, match="DATASETS.VAL_IDS"):
            ablate.main()
    finally:
        sys.argv = argv
    assert not (tmp_path / "runs").exists()
    text = run(base + ["DATASETS.VAL_IDS", "2"], d)
    rows = [line for line in (tmp_path / "sweep" / "sweep.md").read_text().splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and sum("**selected**" in row for row in rows) == 1 and "selected" in text
    val = {row.split(" | ")[0][2:]: float(row.split(" | ")[1]) for row in rows}
    chosen = next(row.split(" | ")[0][2:] for row in rows if "**selected**" in row)
    assert val[chosen] == max(val.values())
    for name in val:
        summary = json.load(open(tmp_path / "runs" / name / "summary.json"))
        assert {"best", "test_best_epoch"} <= set(summary)


@newest_stack_only
def test_benchmark_eval_times_the_authors_functions_at_every_regime(tmp_path):
    """--official-repo: only euclidean_distance and eval_func are taken from the repository's
    utils/metrics.py (its plotting imports are not run); every regime is timed against both official
    sides, the results agree, and one table is printed."""
    repo = tmp_path / "Signal"
    (repo / "utils").mkdir(parents=True)
    (repo / "utils" / "metrics.py").write_text(
        "import seaborn_that_is_not_installed\n\n\n"
        "def euclidean_distance(qf, gf):\n    from reference import official\n"
        "    return official.euclidean_distance(qf, gf)\n\n\n"
        "def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):\n    from reference import official\n"
        "    return official.eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)[:2]\n")
    out = run([os.path.join(TOOLS, "benchmark_eval.py"), "--num-query", "40", "--num-gallery", "200", "--dim", "64",
               "--ids", "8", "--repeat", "1", "--official-repo", str(repo)], tmp_path)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    speedups = [r for r in records if r["figure"] == "evaluation_speedup_vs_official_authors_code"]
    assert [r["regime"] for r in speedups] == ["trained", "weak", "untrained"]
    assert all(r["identical_results"] and r["value"] > 0 for r in speedups)
    assert speedups[0]["mAP"] > speedups[1]["mAP"] > speedups[2]["mAP"]      # three feature qualities
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and all(line.count("|") == 7 and line.endswith("x |") for line in table[1:])
    r = python(os.path.join(TOOLS, "benchmark_eval.py"), "--official-repo", tmp_path / "nothing", cwd=tmp_path,
               expect=2, env=dict(os.environ, PYTHONPATH=ROOT))
    assert "--official-repo" in r.stderr and "Traceback" not in r.stderr
