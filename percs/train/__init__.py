"""Training PerCS-DINO: the typed config, the loop (single process or torchrun/DDP), checkpoints, validation.

`percs train --config FILE [--set key=value ...] --out RUN_DIR [--resume]` is `percs.train.train` from the
command line; see percs.train.config for the keys and percs.train.trainer for what a run writes.
"""

import importlib

_EXPORTS = {
    "percs.train.checkpoint": ("CheckpointError", "load_checkpoint", "save_checkpoint"),
    "percs.train.config": ("ConfigError", "TrainConfig", "config_from_dict", "config_to_dict", "load_config"),
    "percs.train.trainer": ("NonFiniteLossError", "TrainResult", "resolve_resume_config", "train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    # Lazy, so that building the `percs` parser does not import torch.
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'percs.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


__all__ = ["CheckpointError", "ConfigError", "NonFiniteLossError", "TrainConfig", "TrainResult", "config_from_dict",
           "config_to_dict", "load_checkpoint", "load_config", "resolve_resume_config", "save_checkpoint", "train"]
