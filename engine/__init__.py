from .inference import (MISS_SETTINGS, MISSING_RULES, any_to_any_table, apply_missing, build_evaluator, encode,
                        evaluate_any_to_any, evaluate_missing, evaluate_model, evaluate_query_gallery, extract,
                        format_metrics, missing_rule, missing_settings, missing_table, model_modalities)
from .amp import amp_mode, autocast_context, make_grad_scaler
from .hooks import EMA, Checkpointer, Evaluation, Hook, PeriodicCheckpoint, Preemption, TensorBoard
from .trainer import NonFiniteLossError, Trainer, default_hooks, do_train, resume_from, train_step, unwrap

__all__ = ["MISS_SETTINGS", "MISSING_RULES", "any_to_any_table", "encode", "evaluate_any_to_any",
           "evaluate_query_gallery", "missing_rule", "missing_settings", "model_modalities", "evaluate_missing", "missing_table", "apply_missing", "build_evaluator", "evaluate_model", "extract", "format_metrics", "do_train",
           "Trainer", "Hook", "EMA", "Checkpointer", "Evaluation", "PeriodicCheckpoint", "Preemption", "TensorBoard",
           "default_hooks",
           "resume_from", "unwrap", "NonFiniteLossError", "train_step", "make_grad_scaler",
           "amp_mode", "autocast_context"]
