"""The documentation's snippets run as written: the Python API (docs/api.md) and the YAML examples of your
own data (docs/data.md)."""
import os
import re
import subprocess
import sys

from .conftest import ROOT


def readme_section(title, page="README.md"):
    text = open(os.path.join(ROOT, page)).read()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_python_api_snippet_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Python API", "docs/api.md"), re.S)
    assert blocks, "no python block in the README's Python API section"
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")  # the repository root, without its data
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert "torch.Size([64, 384])" in r.stdout


def test_your_own_data_examples_load(tmp_path):
    """The three YAML examples of "Your own data", saved at the repository root as the README says, load and
    pass every config check."""
    from config import load_config
    blocks = re.findall(r"```yaml\n(.*?)```", readme_section("Your own data", "docs/data.md"), re.S)
    assert len(blocks) == 3
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    cfgs = []
    for i, text in enumerate(blocks):
        path = tmp_path / f"my{i}.yml"
        path.write_text(text)
        cfgs.append(load_config(str(path)))
        assert cfgs[-1].DATASETS.NAMES == "Custom" and cfgs[-1].DATASETS.CUSTOM.FOLDER
    assert cfgs[1].DATASETS.CUSTOM.TILE_ORDER == ["TI", "RGB", "NI"] and cfgs[1].INPUT.SIZE_TRAIN == [128, 256]
    assert cfgs[2].DATASETS.CUSTOM.MODALITIES == ["RGB", "TI"]


def test_python_api_from_another_folder_as_the_readme_says(tmp_path):
    """The README's PYTHONPATH recipe works from a folder outside the repository."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_section("Python API", "docs/api.md"), re.S)
    assert blocks, "no bash block in the README's Python API section"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = blocks[0].replace("/path/to/Signal-ReID", ROOT).replace("python ", f"{sys.executable} ")
    r = subprocess.run(["bash", "-euc", script], cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
