"""Mixed precision: which autocast a run uses, its GradScaler, and the scaler's per-epoch health."""
import torch

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def amp_mode(cfg, device):
    """The autocast a run on ``device`` uses: SOLVER.AMP on CUDA (and on the CPU with SOLVER.AMP_ON_CPU),
    else 'none'."""
    if device.type == "cuda" or cfg.SOLVER.AMP_ON_CPU:
        return cfg.SOLVER.AMP
    return "none"


def autocast_context(device, amp):
    """Autocast on ``device``'s type at ``amp`` ('fp16', 'bf16'); disabled for 'none'."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=_DTYPES[amp])


def make_grad_scaler(device, amp):
    """The gradient scaler of fp16 autocast (the official recipe on CUDA; on the CPU a CPU scaler, torch
    >= 2.3), else None."""
    if amp != "fp16":
        return None
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device.type)
    if device.type != "cuda":
        raise RuntimeError(f"fp16 on {device.type} needs a GradScaler for that device: torch >= 2.3")
    return torch.cuda.amp.GradScaler()


def scaled_step(scaler, optimizer, loss, skipped=None):
    """Backward of the scaled ``loss``, the optimizer step (skipped by the scaler when a gradient is not
    finite) and the scale update. ``skipped``: a 0-dim integer tensor on the loss's device that counts the
    skipped steps, with no host synchronisation (the scale falls exactly when a step is skipped)."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    if skipped is None:
        scaler.update()
        return
    on_device = isinstance(getattr(scaler, "_scale", None), torch.Tensor)
    before = scaler._scale.clone() if on_device else scaler.get_scale()
    scaler.update()
    if on_device:
        skipped += (scaler._scale < before).to(skipped.dtype)
    else:
        skipped += int(scaler.get_scale() < before)
