"""Training: one trainer (``trainer.train``) and method plugins (``training.methods``)."""

from .config import TrainConfig
from .methods import Method, TextBatch, available_methods, get_method, register_method
from .trainer import state_path, step_path, train

__all__ = ["Method", "TextBatch", "TrainConfig", "available_methods", "get_method", "register_method",
           "state_path", "step_path", "train"]
