"""RAVLT backbone, checkpoint loading and counting, ImageNet evaluation (the model-level workload is
attnbench.workloads.model).

Imports nothing from `mechanisms`: mixers are found through the registry when a model is built, and the
registry's first lookup loads the built-in mechanisms, so `create_ravlt("ravlt_t")` works in a fresh interpreter.
"""

from attnbench.models.checkpoint import CheckpointInfo, load_checkpoint
from attnbench.models.ravlt import RAVLT, RAVLT_CONFIGS, RavltConfig, create_ravlt, ravlt_config

__all__ = [
    "RAVLT",
    "RAVLT_CONFIGS",
    "CheckpointInfo",
    "RavltConfig",
    "create_ravlt",
    "load_checkpoint",
    "ravlt_config",
]
