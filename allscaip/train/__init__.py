"""Training: configuration schema, the training loop and the ``allscaip-train`` command."""

from allscaip.train.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)
from allscaip.train.trainer import Trainer, train

__all__ = [
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "Trainer",
    "train",
]
