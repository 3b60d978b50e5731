from .inference import apply_missing, build_evaluator, evaluate_model, extract, format_metrics
from .trainer import NonFiniteLossError, do_train, resume_from, unwrap

__all__ = ["apply_missing", "build_evaluator", "evaluate_model", "extract", "format_metrics", "do_train",
           "resume_from", "unwrap", "NonFiniteLossError"]
