"""Training: one trainer for every method (``trainer.train``); each method's own training code is its plugin in
``infusion.methods.<name>.training``, found through the registry."""

from infusion.methods.base import Method, TextBatch
from infusion.methods.registry import available_methods, get_method
from infusion.training.config import TrainConfig
from infusion.training.trainer import Trainer, state_path, step_path, train

__all__ = ["Method", "TextBatch", "TrainConfig", "available_methods", "get_method", "Trainer", "state_path", "step_path", "train"]
