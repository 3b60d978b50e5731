"""Export the eval model to ONNX (RGB, NI, TI images and camera ids in, test feature out, dynamic batch)
and check onnxruntime's output against PyTorch's on the same input.

    python tools/export_onnx.py --config_file configs/Synthetic/demo.yml --weight output/demo/best.pth \\
        --output output/demo/signal.onnx

Needs the optional packages ``onnx``, ``onnxscript`` and ``onnxruntime`` (pip install -r
requirements-export.txt).
"""
import os

import numpy as np
import torch
import torch.nn as nn

from common import load_everything, tool_parser
from engine.setup import UsageError, run_cli  # noqa: E402


class ExportWrapper(nn.Module):
    """Positional inputs for export: (one image batch per modality, in the model's order, cam_ids) -> feature."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        *images, cam_ids = inputs
        return self.model(dict(zip(self.model.modalities, images)), cam_label=cam_ids)


def main():
    p = tool_parser(__doc__, ext=".onnx")
    p.add_argument("--batch", type=int, default=3, help="batch of the check input (the export is dynamic)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_intermixed_args()
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("onnxruntime is not installed: pip install -r requirements-export.txt") from None
    cfg, model, loader, nq, device = load_everything(args, need_weights=False)
    model = model.cpu().eval()
    wrapper = ExportWrapper(model).eval()
    h, w = cfg.INPUT.SIZE_TEST
    g = torch.Generator().manual_seed(0)
    num_cams = model.backbone.cam_embed.shape[0] if model.backbone.cam_embed is not None else 1
    names = [m.lower() for m in model.modalities] + ["cam_ids"]  # rgb, ni, ti, cam_ids
    example = tuple(torch.randn(2, 3, h, w, generator=g) for _ in model.modalities) + (
        torch.zeros(2, dtype=torch.long),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = ({0: batch},) * len(names)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.onnx.export(wrapper, example, args.output, input_names=names,
                      output_names=["feature"], dynamic_shapes=(dynamic,), opset_version=args.opset, dynamo=True)
    check = tuple(torch.randn(args.batch, 3, h, w, generator=g) for _ in model.modalities) + (
        torch.randint(0, num_cams, (args.batch,), generator=g),)
    with torch.no_grad():
        ref = wrapper(*check).numpy()
    sess = ort.InferenceSession(args.output, providers=["CPUExecutionProvider"])
    out = sess.run(None, {n: t.numpy() for n, t in zip(names, check)})[0]
    diff = float(np.abs(out - ref).max())
    print(f"exported {args.output}: input {len(names) - 1} x [B, 3, {h}, {w}] + cam_ids [B], output {list(out.shape)}")
    print(f"largest |onnxruntime - pytorch| on a batch of {args.batch}: {diff:.3e}")
    if diff > args.tolerance:
        raise SystemExit(f"difference {diff:.3e} exceeds the tolerance {args.tolerance:.1e}")


if __name__ == "__main__":
    run_cli(main)
