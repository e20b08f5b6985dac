"""The training engine: one loop for every method, on Hugging Face Accelerate."""

from joryu.engine.checkpoint import latest_checkpoint, load_weights, save_weights
from joryu.engine.loop import Engine, FitResult, StepContext, lr_factor, optimizer_builder

__all__ = ["Engine", "FitResult", "StepContext", "latest_checkpoint", "load_weights", "lr_factor",
           "optimizer_builder", "save_weights"]
