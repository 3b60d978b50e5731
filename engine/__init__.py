from .inference import (MISS_SETTINGS, apply_missing, build_evaluator, evaluate_missing, evaluate_model, extract,
                        format_metrics, missing_table)
from .amp import amp_mode, autocast_context, make_grad_scaler
from .hooks import EMA, Hook
from .trainer import NonFiniteLossError, Trainer, default_hooks, do_train, resume_from, train_step, unwrap

__all__ = ["MISS_SETTINGS", "evaluate_missing", "missing_table", "apply_missing", "build_evaluator", "evaluate_model", "extract", "format_metrics", "do_train",
           "Trainer", "Hook", "EMA", "default_hooks",
           "resume_from", "unwrap", "NonFiniteLossError", "train_step", "make_grad_scaler",
           "amp_mode", "autocast_context"]
