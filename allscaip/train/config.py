"""The training configuration schema: sections ``model``, ``data``, ``optim``, ``run``.

A YAML file holds some or all sections; ``section.key=value`` overrides (values parsed as
YAML) are applied on top. Unknown sections or keys are a :class:`ConfigError` listing the
valid ones. Relative data paths in the YAML file are relative to the file's directory;
paths given as command-line overrides, and ``run.out_dir``, are relative to the current
directory.

The ``model`` section takes the :class:`~allscaip.config.ModelConfig` keys plus ``preset``
(``tiny``, ``small``, ``sm``, ``md``: a base that the other keys override). When
``model.elements`` is omitted, the elements present in the training data are used (sorted by
atomic number).

``run.init_from`` starts a fine-tune from a checkpoint: one of ours (the ``model`` section must
match it) or one converted from fairchem by ``allscaip convert-fairchem``, whose network comes
from the file (:mod:`allscaip.train.fairchem_finetune`, docs/fairchem.md "Fine-tuning").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from ase.data import atomic_numbers

from allscaip.config import PRESETS, ModelConfig
from allscaip.config_schema import (
    ConfigError,
    as_list,
    check_keys,
    coerce_fields,
    coerce_mapping,
    from_dict,
    preset_values,
)
from allscaip.dtypes import DTYPES

__all__ = [
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "parse_overrides",
]


@dataclass
class DataConfig:
    """Training / validation data and batching."""

    train: list[str] = field(default_factory=list)  # files or directories (extxyz, ASE db, ASE-LMDB)
    val: list[str] = field(default_factory=list)  # empty: hold out ``val_fraction`` of ``train``
    max_atoms: int = 400  # atoms per batch (per process); a larger single frame forms its own batch
    stream: bool | None = None  # None: stream (read frames lazily) when the files total > 1 GiB
    val_fraction: float = 0.05  # used only when no ``val`` files are given
    num_workers: int = 0  # DataLoader worker processes
    shuffle: bool = True

    def __post_init__(self) -> None:
        coerce_fields(self, "data")
        if not self.train:
            raise ConfigError("data.train: give at least one training data file or directory")
        if self.max_atoms < 1:
            raise ConfigError(f"data.max_atoms must be >= 1, got {self.max_atoms}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


# How optim.energy_scale may be derived from the training set (allscaip.train.fitting).
ENERGY_SCALE_CHOICES = ("force_rms", "energy_rms")


@dataclass
class OptimConfig:
    """Optimiser, schedule and loss.

    Loss per optimizer step (sums over every system / atom of the step on all processes,
    divided by the global counts): ``energy_coef * mean_sys |ΔE/N| / σ_E +
    force_coef * mean_atoms |ΔF|_2 / σ_F + stress_coef * mean_labelled mean_9 (ΔS/σ_S)^2``
    with σ_E the model's output scale (``energy_scale`` below) and σ_F, σ_S the training-set RMS of
    the force and stress components.
    With ``density_constraint``, the weights are held at ``m = 0``, where ``-m`` is the
    first-order density shift (%) of the model against the NPT frames marked
    ``density_config_type`` (:mod:`allscaip.train.ensemble`): a projection step every
    ``density_every_steps`` optimizer steps, and the EMA weights projected before each validation.
    """

    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-3  # on weight matrices only (not on biases, norms, scales)
    warmup_steps: int | None = None  # linear warm-up; None: warmup_fraction of all steps
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 100.0  # max global gradient norm (0: no clipping)
    ema_decay: float = 0.99  # EMA of the weights, updated every optimizer step
    energy_coef: float = 1.0
    force_coef: float = 10.0
    stress_coef: float = 1.0
    # the model's output scale (eV per unit readout) and the energy loss's σ_E, fixed before the
    # first step: force_rms (the training forces' RMS times 1 Å), energy_rms (per-atom energy RMS
    # after the element references), or a number in eV. force_rms is the robust choice: bulk data
    # spreads little per atom (NaCl(aq): 6.8 meV against 0.86 eV/Å force RMS); scaled by that, the
    # energy term outweighed the forces 127x and the forces stayed at zero (docs/model.md).
    energy_scale: float | str = "force_rms"
    density_constraint: bool = False  # hold the labeller's NPT density; needs its NPT frames in data.train
    density_config_type: str = "teacher_md"  # config_type of those frames
    density_every_steps: int = 100  # optimizer steps between projections onto the constraint
    epochs: int = 100
    accumulate: int = 1  # sampler batches (per process) per optimizer step
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_fields(self, "optim")
        for k in (
            "lr",
            "weight_decay",
            "warmup_fraction",
            "min_lr_ratio",
            "grad_clip",
            "energy_coef",
            "force_coef",
            "stress_coef",
        ):
            if getattr(self, k) < 0:
                raise ConfigError(f"optim.{k} must be >= 0, got {getattr(self, k)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.epochs < 1 or self.accumulate < 1:
            raise ConfigError(f"optim.epochs and optim.accumulate must be >= 1, got {self.epochs}, {self.accumulate}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0 or null, got {self.warmup_steps}")
        if self.density_every_steps < 1:
            raise ConfigError(f"optim.density_every_steps must be >= 1, got {self.density_every_steps}")
        if self.energy_coef == 0 and self.force_coef == 0:
            raise ConfigError("optim.energy_coef and optim.force_coef are both 0: nothing to train on")
        if isinstance(self.energy_scale, str):
            if self.energy_scale not in ENERGY_SCALE_CHOICES:
                raise ConfigError(
                    f"optim.energy_scale must be one of {list(ENERGY_SCALE_CHOICES)} or a positive number "
                    f"(eV), got {self.energy_scale!r}"
                )
        elif not self.energy_scale > 0:
            raise ConfigError(f"optim.energy_scale must be > 0 eV, got {self.energy_scale}")


@dataclass
class RunConfig:
    """Output, checkpointing, precision and device."""

    out_dir: str = "runs/allscaip"  # last.ckpt, best.ckpt, metrics.csv, config.yaml
    checkpoint_every_steps: int = 0  # also write last.ckpt every N optimizer steps (0: per epoch only)
    eval_every_epochs: int = 1  # validate, log metrics and write last/best.ckpt every N epochs (and at the end)
    log_every: int = 10  # progress-bar refresh of the running loss, in optimizer steps
    dtype: str = "float32"  # float32 | float64
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    resume: bool = False  # continue from out_dir/last.ckpt (same as --resume)
    # fine-tune: start from this checkpoint's (EMA) weights, fresh optimizer and schedule; a checkpoint
    # converted from fairchem (allscaip convert-fairchem) brings its own network (model section: elements only)
    init_from: str | None = None
    overwrite: bool = False  # allow a fresh run in an out_dir that already holds a checkpoint
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps in total
    progress: bool | None = None  # progress bar; None: only when stderr is a terminal
    deterministic: bool = False  # torch.use_deterministic_algorithms during training
    threads: int | None = None  # torch.set_num_threads during training (None: unchanged)

    def __post_init__(self) -> None:
        coerce_fields(self, "run")
        if self.dtype not in DTYPES:
            raise ConfigError(f"run.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.checkpoint_every_steps < 0 or self.log_every < 1 or self.eval_every_epochs < 1:
            raise ConfigError("run.checkpoint_every_steps must be >= 0, run.log_every and run.eval_every_epochs >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"run.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"run.threads must be >= 1 or null, got {self.threads}")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    """The whole resolved training configuration."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model_preset: str | None = None  # the preset the model section started from (informative)
    elements_from_data: bool = False  # model.elements was omitted: fill from the training data

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/torch.save-safe) dictionary of the four sections."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def with_elements(self, elements: Sequence[int]) -> "TrainConfig":
        """A copy whose model uses ``elements`` (sorted by Z)."""
        model = dataclasses.replace(self.model, elements=sorted(int(z) for z in elements))
        return dataclasses.replace(self, model=model, elements_from_data=False)


# ----------------------------------------------------------------------------- loading


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str, Any]]:
    """``["optim.lr=2e-3", ...]`` -> ``[("optim", "lr", 0.002), ...]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"override {item!r} must look like section.key=value (e.g. optim.lr=0.002); "
                f"sections are {sorted(SECTIONS)}"
            )
        section, name = parts
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; valid sections are {sorted(SECTIONS)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
        out.append((section, name, value))
    return out


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (``None``: overrides only) and apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    base_dir = Path(".")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping of sections {sorted(SECTIONS)}")
        raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in loaded.items()}
        base_dir = path.parent
        _check_sections(raw, str(path))
        data = raw.get("data")
        if isinstance(data, dict):
            for key in ("train", "val"):
                if key in data and data[key] is not None:
                    data[key] = [_relative_to(p, base_dir) for p in as_list(data[key])]
    for section, name, value in parse_overrides(overrides):
        sec = raw.setdefault(section, {})
        if sec is None:
            sec = raw[section] = {}
        sec[name] = value
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a mapping of sections (paths taken as given)."""
    _check_sections(raw, "config")
    sections = {}
    for name in ("data", "optim", "run"):
        sec = raw.get(name) or {}
        if not isinstance(sec, Mapping):
            raise ConfigError(f"section {name!r} must be a mapping of keys, got {sec!r}")
        sections[name] = from_dict(SECTIONS[name], sec, name)
    model_raw = dict(raw.get("model") or {})
    check_keys(model_raw, [f.name for f in dataclasses.fields(ModelConfig)] + ["preset"], "model")
    preset = model_raw.pop("preset", None)
    preset_base = preset_values(PRESETS, preset, "model.preset")
    from_data = model_raw.get("elements") is None
    if from_data:
        model_raw["elements"] = [1]  # placeholder until the training data are read
    else:
        model_raw["elements"] = [_to_z(z) for z in as_list(model_raw["elements"])]
    model = from_dict(ModelConfig, coerce_mapping(ModelConfig, {**preset_base, **model_raw}, "model"), "model")
    return TrainConfig(model=model, model_preset=preset, elements_from_data=from_data, **sections)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved configuration as YAML text (``model.elements: null`` while still to be
    taken from the training data)."""
    d = cfg.to_dict()
    if cfg.elements_from_data:
        d["model"]["elements"] = None
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------- helpers


def _check_sections(raw: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; valid sections are {sorted(SECTIONS)}")


def _relative_to(p: Any, base: Path) -> str:
    p = os.path.expanduser(str(p))
    return p if os.path.isabs(p) else os.path.normpath(str(base / p))


def _to_z(z: Any) -> int:
    """Atomic number from an int or a chemical symbol."""
    if isinstance(z, str) and not z.strip().isdigit():
        if z.strip() not in atomic_numbers:
            raise ConfigError(f"model.elements: unknown chemical symbol {z!r}")
        return int(atomic_numbers[z.strip()])
    try:
        return int(z)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.elements: {z!r} is neither an atomic number nor a chemical symbol") from err
