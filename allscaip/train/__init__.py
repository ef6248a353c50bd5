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


def __getattr__(name: str):
    # the trainer pulls in the model and data layers; import it on first use
    if name in ("Trainer", "train"):
        from allscaip.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
