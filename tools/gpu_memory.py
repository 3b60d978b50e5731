"""Peak GPU memory of a training step (and of evaluation) estimated without a GPU, by part.

    python tools/gpu_memory.py --config_file configs/RGBNT201/Signal.yml [--batch 64] [--amp fp16|bf16|none]
                               [--gpu-mem 24] [--device cuda|cpu] [KEY VALUE ...]

The step runs on fake tensors (torch's FakeTensorMode: shapes, dtypes and devices, no memory, no GPU) under
the autocast policy of ``--device`` at ``--amp``. Counted, in bytes:

* weights (fp32 parameters and buffers), gradients (fp32, trainable parameters), optimizer state (Adam: two
  fp32 moments per trainable parameter; SGD: one momentum buffer);
* autocast weight copies: the fp16 / bf16 casts of the weights autocast makes and keeps for the forward;
* saved activations: every tensor autograd saves for the backward (``saved_tensors_hooks``), each storage
  once, weights and their casts left out;
* the input batch (three modalities);
* the largest transient: twice the largest tensor of the forward (in the backward its gradient and the
  gradient of its input exist together);
* with MODEL.GRAD_CHECKPOINT, one backbone block's activations, recomputed in the backward (the largest
  transient then counts only what exceeds them: the largest tensors are a block's own).

``peak_gib`` is their sum, at the start of the backward, where saved activations and weight copies are all
alive. Not counted: the CUDA context (about 0.3-0.6 GiB per process) and the caching allocator's
fragmentation; ``--gpu-mem`` keeps 10% and 0.6 GiB free for them when it looks for the largest batch (in
whole P x K identities) that fits. One JSON line per figure.
"""
import argparse
import json
import os
import sys

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from data.datasets import reference_sizes  # noqa: E402
from engine.setup import SetupError, run_cli  # noqa: E402
from modeling import MODALITIES, build_loss, build_model  # noqa: E402
from utils import fake_cuda  # noqa: E402

GIB = 2 ** 30
_AMP = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}
# Room left on the GPU for what the estimate does not count (CUDA context, allocator fragmentation).
CONTEXT_GIB, SLACK = 0.6, 0.10


def _storage(t):
    return StorageWeakRef(t.untyped_storage())


class _Tensors(TorchDispatchMode):
    """Records the largest tensor an op makes and which storages are casts of given (weight) storages."""

    def __init__(self, weights):
        super().__init__()
        self.weights, self.casts, self.largest = weights, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outs:
            self.largest = max(self.largest, t.numel() * t.element_size())
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor) \
                and _storage(args[0]) in self.weights:
            for t in outs:
                self.casts[_storage(t)] = t.untyped_storage().nbytes()
        return out


class _FusedAttention(torch.overrides.TorchFunctionMode):
    """On fake CUDA tensors F.scaled_dot_product_attention would decompose into the math kernel, which keeps
    the attention matrix for the backward; a GPU runs a fused kernel that keeps q, k, v, the output and the
    log-sum-exp. Call that kernel (flash attention in fp16 / bf16, memory-efficient attention in fp32), whose
    fake implementation saves what the GPU saves."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention or kwargs.get("attn_mask") is not None \
                or len(args) > 3 or args[0].device.type != "cuda":
            return func(*args, **kwargs)
        q, k, v = args
        p, causal, scale = kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False), kwargs.get("scale")
        if q.dtype in (torch.float16, torch.bfloat16):
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, p, causal, False, scale=scale)[0]
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, p, causal,
                                                                       scale=scale)[0]


def _model(cfg, num_classes, num_cameras):
    model = build_model(cfg, num_classes, num_cameras, pretrained=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return model, trainable, weights


def _fake_batch(cfg, batch, size, device, num_instance):
    images = {m: torch.randn(batch, 3, *size, device=device) for m in MODALITIES}
    pid = torch.arange(batch, device=device) // max(1, min(num_instance, batch))
    return images, pid, torch.zeros(batch, dtype=torch.long, device=device)


class MemoryEstimate:
    """A config's model on fake tensors of ``device`` under ``amp``; ``train(batch)`` and ``evaluation()``
    give the parts of the peak memory in bytes (see the module text). The model is built once."""

    def __init__(self, cfg, amp="fp16", device="cuda", num_classes=171, num_cameras=4):
        from torch._subclasses.fake_tensor import FakeTensorMode
        self.cfg, self.device, self.dtype = cfg, device, _AMP[amp]
        self.model, trainable, self.weight_bytes = _model(cfg, num_classes, num_cameras)
        self.loss_fn = build_loss(cfg)
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_cuda.to_fake(self.model, self.mode, device)
        self.weights = {_storage(t) for t in list(self.model.parameters()) + list(self.model.buffers())}
        moments = {"Adam": 2, "AdamW": 2, "SGD": 1}.get(cfg.SOLVER.OPTIMIZER_NAME, 2)
        self.fixed = {"weights": self.weight_bytes, "gradients": 4 * trainable,
                      "optimizer_state": 4 * moments * trainable}

    def _forward(self, images, pid, cams):
        """Saved activations (bytes by storage) and the op tracker of one training forward + loss."""
        saved = {}

        def pack(t):
            saved[_storage(t)] = t.untyped_storage().nbytes()
            return t

        tracker = _Tensors(self.weights)
        with fake_cuda.autocast(torch.device(self.device).type, self.dtype), tracker, _FusedAttention(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sum(self.loss_fn(self.model(images, cam_label=cams), pid).values())
        return sum(v for k, v in saved.items() if k not in self.weights and k not in tracker.casts), tracker

    def train(self, batch):
        cfg, backbone = self.cfg, self.model.backbone
        parts = dict(self.fixed)
        # cuDNN's grid sampler has no fake kernel; the native one takes the same memory
        with self.mode, torch.backends.cudnn.flags(enabled=False):
            images, pid, cams = _fake_batch(cfg, batch, cfg.INPUT.SIZE_TRAIN, self.device,
                                            cfg.DATALOADER.NUM_INSTANCE)
            self.model.train()
            saved, tracker = self._forward(images, pid, cams)
            parts["autocast_weight_copies"] = sum(tracker.casts.values())
            parts["saved_activations"] = saved
            parts["input_batch"] = sum(x.numel() * x.element_size() for x in images.values())
            parts["largest_transient"] = 2 * tracker.largest
            if backbone.grad_checkpointing:
                # the backward recomputes one block at a time: one block's activations exist on top of the rest
                backbone.grad_checkpointing = False
                try:
                    plain, _ = self._forward(images, pid, cams)
                finally:
                    backbone.grad_checkpointing = True
                parts["recomputed_block"] = max(0, plain - saved) // len(backbone.vit.blocks)
                # the largest tensors are a block's own: its gradients are made while that block is recomputed
                parts["largest_transient"] = max(0, parts["largest_transient"] - parts["recomputed_block"])
        return parts

    def evaluation(self):
        cfg = self.cfg
        with self.mode, torch.backends.cudnn.flags(enabled=False):
            images, _, cams = _fake_batch(cfg, cfg.TEST.IMS_PER_BATCH, cfg.INPUT.SIZE_TEST, self.device, 1)
            tracker = _Tensors(self.weights)
            self.model.eval()
            with torch.no_grad(), fake_cuda.autocast(torch.device(self.device).type, self.dtype), tracker, \
                    _FusedAttention():
                self.model(images, cam_label=cams)
        return {"weights": self.weight_bytes, "autocast_weight_copies": sum(tracker.casts.values()),
                "input_batch": sum(x.numel() * x.element_size() for x in images.values()),
                "largest_transient": 2 * tracker.largest}


def estimate(cfg, batch, amp="fp16", device="cuda", num_classes=171, num_cameras=4):
    """``{"train": parts, "train_peak", "eval": parts, "eval_peak"}`` in bytes for one training step at
    ``batch`` and one evaluation batch (TEST.IMS_PER_BATCH)."""
    est = MemoryEstimate(cfg, amp, device, num_classes, num_cameras)
    train, evaluation = est.train(batch), est.evaluation()
    return {"train": train, "train_peak": sum(train.values()), "eval": evaluation,
            "eval_peak": sum(evaluation.values())}


def fits(peak_bytes, gpu_gib):
    return peak_bytes / GIB * (1 + SLACK) + CONTEXT_GIB <= gpu_gib


def largest_batch(est, gpu_gib):
    """The largest P x K batch (K = DATALOADER.NUM_INSTANCE, P >= 2) whose training step fits ``gpu_gib``
    (``est``: a MemoryEstimate); 0 when none does. Memory grows with the batch: a bisection over P finds it."""
    k = est.cfg.DATALOADER.NUM_INSTANCE

    def ok(p):
        return fits(sum(est.train(p * k).values()), gpu_gib)

    if not ok(2):
        return 0
    lo, hi = 2, 4
    while ok(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo * k


# Common GPUs and their memory in GiB (NVIDIA's product pages: 24 GB GDDR6X, 40 / 80 GB HBM2e, 80 GB HBM3).
GPUS = (("RTX 3090 / 4090", 24), ("A100 40GB", 40), ("A100 80GB / H100", 80))


def print_table(args, batch):
    """The training step's estimated peak for the three precisions, with and without checkpointing."""
    print(f"| {os.path.relpath(args.config_file)}, batch {batch} | peak GiB | saved activations GiB | fits "
          f"(+{int(SLACK * 100)}% + {CONTEXT_GIB} GiB) |")
    print("|---|---:|---:|---|")
    for amp in ("fp16", "bf16", "none"):
        for ck in ("no", "yes"):
            cfg = load_config(args.config_file, list(args.opts) + ["MODEL.GRAD_CHECKPOINT", ck])
            parts = MemoryEstimate(cfg, amp, args.device, num_classes=args.num_classes).train(batch)
            peak = sum(parts.values())
            gpus = ", ".join(name for name, gib in GPUS if fits(peak, gib)) or "none of these"
            print(f"| {'fp32' if amp == 'none' else amp}{', grad. checkpointing' if ck == 'yes' else ''} | "
                  f"{peak / GIB:.1f} | {parts['saved_activations'] / GIB:.1f} | {gpus} |", flush=True)


def emit(name, value, unit, **extra):
    print(json.dumps({"figure": name, "value": value, "unit": unit, **extra}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", required=True)
    p.add_argument("--batch", type=int, default=0, help="training batch (default SOLVER.IMS_PER_BATCH)")
    p.add_argument("--amp", choices=sorted(_AMP), default="", help="default SOLVER.AMP")
    p.add_argument("--gpu-mem", type=float, default=0.0, help="GiB of the GPU: print the largest batch that fits")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--num-classes", type=int, default=0,
                   help="training identities (classifier size); default: those of the config's benchmark")
    p.add_argument("--table", action="store_true", help="a Markdown table instead: fp16, bf16 and fp32, with and "
                                                        "without MODEL.GRAD_CHECKPOINT, and the GPUs each fits")
    p.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = p.parse_args()
    if not fake_cuda.available():
        raise SetupError(f"tools/gpu_memory.py needs torch >= 2.3 (fake CUDA tensors); this is torch "
                         f"{torch.__version__}")
    cfg = load_config(args.config_file, args.opts)
    args.num_classes = args.num_classes or reference_sizes(cfg)[0].train_ids
    amp = args.amp or cfg.SOLVER.AMP
    batch = args.batch or cfg.SOLVER.IMS_PER_BATCH
    if args.table:
        return print_table(args, batch)
    est = MemoryEstimate(cfg, amp, args.device, num_classes=args.num_classes)
    train, evaluation = est.train(batch), est.evaluation()
    base = {"config": args.config_file, "batch": batch, "amp": amp, "device": args.device,
            "grad_checkpoint": bool(cfg.MODEL.GRAD_CHECKPOINT)}
    for k, v in train.items():
        emit(f"train_{k}_gib", round(v / GIB, 3), "GiB", **base)
    emit("peak_gib", round(sum(train.values()) / GIB, 3), "GiB", **base)
    emit("eval_peak_gib", round(sum(evaluation.values()) / GIB, 3), "GiB", **base,
         eval_batch=cfg.TEST.IMS_PER_BATCH)
    if args.gpu_mem:
        emit("largest_batch", largest_batch(est, args.gpu_mem), "samples", **base, gpu_mem_gib=args.gpu_mem,
             num_instance=cfg.DATALOADER.NUM_INSTANCE, reserved=f"{int(SLACK * 100)}% + {CONTEXT_GIB} GiB")

if __name__ == "__main__":
    run_cli(main)
