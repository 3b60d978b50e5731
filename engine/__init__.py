from .inference import apply_missing, build_evaluator, evaluate_model, extract, format_metrics
from .trainer import NonFiniteLossError, do_train, make_grad_scaler, resume_from, train_step, unwrap

__all__ = ["apply_missing", "build_evaluator", "evaluate_model", "extract", "format_metrics", "do_train",
           "resume_from", "unwrap", "NonFiniteLossError", "train_step", "make_grad_scaler"]
