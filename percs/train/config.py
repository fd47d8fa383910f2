"""The training configuration: typed dataclasses read from TOML (or YAML), overridable with `key=value` strings.

Sections (each key documented on its dataclass): `model`, `data` (with `data.sampling`, the Dataset's own
`SamplingConfig`), `optim`, `schedule`, `loss` (`percs.model.LossConfig`), `train`, `log`, `predict`
(`percs.predict.PredictorConfig`, used for validation). Unknown keys and values of the wrong type are
rejected with the dotted key's name. The resolved config is a plain JSON-able dict (`config_to_dict`),
written to RUN_DIR/config.json and stored in every checkpoint; `config_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percs.data.dataset import SamplingConfig
from percs.model.backbone import VARIANTS
from percs.model.losses import LossConfig
from percs.model.percs_dino import HeadConfig
from percs.predict import PredictorConfig

OPTIMIZERS = ("adam", "adamw")
AMP_DTYPES = ("float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config file or override that does not resolve; the message names the dotted key."""


@dataclass(frozen=True)
class ModelSection:
    """backbone: a `percs.model.VARIANTS` key (the paper uses ViT-L). backbone_weights: a DINOv2 state-dict
    file, "official" (torch's download cache) or "" for random initialisation (tests, speed benchmarks).
    backbone_depth / backbone_embed_dim / backbone_num_heads: 0 keeps the variant's; smaller values build
    reduced models for tests (with weights, only depth may shrink: the first blocks are kept)."""

    backbone: str = "vitl14"
    backbone_weights: str = ""
    backbone_depth: int = 0
    backbone_embed_dim: int = 0
    backbone_num_heads: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if self.backbone not in VARIANTS:
            raise ConfigError(f"model.backbone {self.backbone!r} is not one of {sorted(VARIANTS)}")
        for key in ("backbone_depth", "backbone_embed_dim", "backbone_num_heads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} must be >= 0 (0: the variant's), got {getattr(self, key)}")
        if self.backbone_weights and (self.backbone_embed_dim or self.backbone_num_heads):
            raise ConfigError("model.backbone_embed_dim / backbone_num_heads cannot change a pretrained backbone")


@dataclass(frozen=True)
class DataSection:
    """dataset: folder of a built percs dataset (splits and queries; required to train). items_per_epoch: 0 = images in the
    train split. val_max_queries: 0 = all queries of the val split. num_workers: DataLoader processes."""

    dataset: str = ""
    train_split: str = "train"
    val_split: str = "val"
    items_per_epoch: int = 0
    val_max_queries: int = 0
    num_workers: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        for key in ("items_per_epoch", "val_max_queries", "num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} must be >= 0, got {getattr(self, key)}")
        try:
            self.sampling.check()
        except ValueError as error:
            raise ConfigError(f"data.sampling: {error}") from None


@dataclass(frozen=True)
class OptimSection:
    """Adam (the paper's) or AdamW, with separate head and backbone groups.

    lr = 1e-4: the paper does not print its learning rate. 1e-4 is the usual Adam rate for a randomly
    initialised transformer head on frozen DINOv2 features (DINOv2's own linear/DPT heads, SAM's decoder
    fine-tuning use 1e-4 to 1e-3), and with batch size 1 the lower end keeps single-image gradients from
    dominating. weight_decay = 0.1 (the paper's) applies to the head only: Adam's decay is an L2 pull toward
    zero, which would drag pretrained backbone weights away from DINOv2; backbone_weight_decay sets the
    backbone's own (0 by default). freeze_backbone: no gradients into the backbone (the default; required by
    the feature cache); otherwise it is fine-tuned at backbone_lr (10x lower, the usual fine-tuning ratio).
    grad_clip: max global gradient norm, 0 = off.
    """

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.1
    freeze_backbone: bool = True
    backbone_lr: float = 1e-5
    backbone_weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        for key in ("lr", "backbone_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"optim.{key} must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "backbone_weight_decay", "grad_clip"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class ScheduleSection:
    """epochs at batch_size (per process); the LR is multiplied by lr_drop_factor for the last lr_drop_epochs
    (the paper: 60 epochs, batch 1, LR / 10 for the last 10)."""

    epochs: int = 60
    batch_size: int = 1
    lr_drop_epochs: int = 10
    lr_drop_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"schedule.epochs ({self.epochs}) and schedule.batch_size ({self.batch_size}) must be >= 1")
        if not 0 <= self.lr_drop_epochs <= self.epochs:
            raise ConfigError(f"schedule.lr_drop_epochs must be in 0..epochs ({self.epochs}), got {self.lr_drop_epochs}")
        if not 0 < self.lr_drop_factor <= 1:
            raise ConfigError(f"schedule.lr_drop_factor must be in (0, 1], got {self.lr_drop_factor}")


@dataclass(frozen=True)
class TrainSection:
    """seed: model initialisation, sampling and shuffling. device: auto (CUDA when available), cpu or cuda.
    amp: mixed precision on CUDA (autocast at amp_dtype; a GradScaler for float16). feature_cache: with a
    frozen backbone on the CPU, precompute the backbone features of feature_cache_variants augmented versions
    of every item (a finite-augmentation approximation: each epoch draws one of those versions per item
    instead of a fresh random crop); "auto" (frozen and CPU), "on" or "off"."""

    seed: int = 0
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "bfloat16"
    feature_cache: str = "auto"
    feature_cache_variants: int = 8

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"train.device {self.device!r} is not one of {DEVICES}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"train.amp_dtype {self.amp_dtype!r} is not one of {AMP_DTYPES}")
        if self.feature_cache not in ("auto", "on", "off"):
            raise ConfigError(f"train.feature_cache {self.feature_cache!r} is not one of ('auto', 'on', 'off')")
        if self.feature_cache_variants < 1:
            raise ConfigError(f"train.feature_cache_variants must be >= 1, got {self.feature_cache_variants}")


@dataclass(frozen=True)
class LogSection:
    """log_every: steps between JSONL step records. val_every: epochs between validations (0: never).
    checkpoint_every: epochs between checkpoints (the last epoch always writes one). progress: tqdm bar, and a
    console line per validation (AP@0.5, time left)."""

    log_every: int = 10
    val_every: int = 1
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.log_every < 1 or self.checkpoint_every < 1 or self.val_every < 0:
            raise ConfigError(f"log.log_every ({self.log_every}) and log.checkpoint_every ({self.checkpoint_every}) "
                              f"must be >= 1, log.val_every ({self.val_every}) >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The whole resolved configuration of a training run."""

    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)
    predict: PredictorConfig = field(default_factory=PredictorConfig)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested dict of a .toml, .yaml / .yml (needs PyYAML) or .json config file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if suffix == ".toml":
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: {error}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or write the config as TOML")
        data = yaml.safe_load(path.read_text()) or {}
    elif suffix == ".json":
        data = json.loads(path.read_text())
    else:
        raise ConfigError(f"config file {path} has suffix {suffix!r}, expected .toml, .yaml, .yml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value). The value is read as a TOML value (1e-4, true, [1, 2],
    "x"); anything that is not valid TOML is taken as a bare string (paths)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of the nested dict with every `key=value` override set (types are checked on resolution)."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The TrainConfig of a file (None: defaults only) with `key=value` overrides applied."""
    data = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides)))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a nested dict; unknown keys and wrongly typed values raise ConfigError naming the key."""
    return _build(TrainConfig, data, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The nested JSON-able dict of a config dataclass (tuples as lists); config_from_dict reads it back."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def write_config(config: TrainConfig, path: str | Path) -> None:
    """Writes the resolved config as JSON (a file `load_config` reads back)."""
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!r} (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {error}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """value checked against a type hint (int, float, bool, str, tuple[X, ...], X | None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")
