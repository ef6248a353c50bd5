"""The training loop: references, loss, AdamW + cosine schedule, EMA, checkpoints, resume, DDP.

Loss of one optimizer step (the published AllScAIP choice: L1 per-atom energy + L2-norm
forces), with sums over all systems/atoms the step sees on *all* processes and the counts
all-reduced first, so that ``R`` processes × ``A`` accumulated batches equal one process with
``R·A`` accumulated batches::

    L = energy_coef * Σ_sys |E - E_ref| / N_sys / σ_E / n_sys
      + force_coef  * Σ_atoms ‖F - F_ref‖_2 / σ_F / n_atoms
      + stress_coef * Σ_labelled mean_9((S - S_ref) / σ_S)^2 / n_stress

σ_E: RMS of the per-atom energy after subtracting the fitted element references (also the
model's ``energy_scale``), σ_F: RMS force component, σ_S: RMS stress component (training set).
Gradients are summed over micro-batches and processes (manual all-reduce), clipped, then
AdamW steps; the learning rate warms up linearly and decays as a cosine per optimizer step;
an EMA of the weights (decay ``min(ema_decay, (1+t)/(10+t))``) is validated and exported.

Resume: ``last.ckpt`` holds weights, EMA, optimizer, scheduler, RNG states and the position in
the epoch (sampler batches consumed); the sampler's batch list depends only on (seed, epoch),
so a resumed run skips the consumed batches and ends bit-for-bit with the weights of an
uninterrupted run (same device, dtype and thread count).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

import allscaip
from allscaip.checkpoint import load_checkpoint, model_config_of, save_checkpoint
from allscaip.config import ConfigError
from allscaip.data import MaxAtomsBatchSampler, StructureDataset, make_loader
from allscaip.data.batch import AtomsBatch
from allscaip.data.references import fit_references_and_rms
from allscaip.model import AllScAIP, compute_properties
from allscaip.train.config import TrainConfig, dump_config
from allscaip.train.ensemble import DensityTerm

METRIC_COLUMNS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_energy_mae_meV_atom",
    "train_force_mae_meV_A",
    "val_energy_mae_meV_atom",
    "val_energy_rmse_meV_atom",
    "val_force_mae_meV_A",
    "val_force_rmse_meV_A",
    "val_stress_mae_meV_A3",
    "density_shift_pct",
    "train_time_s",
    "structures_per_s",
]
# running sums since the last metrics row (this process): loss, Σ|ΔE|/N, systems, Σ|ΔF_c|, force components, steps
_SUM_KEYS = ["loss", "energy_abs", "n_sys", "force_abs", "n_force", "steps"]
ENERGY_SCALE_FLOOR = 1e-4  # eV/atom
FORCE_SCALE_FLOOR = 1e-3  # eV/Å
STRESS_SCALE_FLOOR = 1e-5  # eV/Å^3


class _Subset:
    """Index view of a dataset that keeps ``natoms_per_frame``."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]

    @property
    def natoms_per_frame(self) -> np.ndarray:
        return np.asarray(self.base.natoms_per_frame)[self.indices]


class _BatchList:
    """A fixed list of index batches usable as a DataLoader ``batch_sampler``."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [list(b) for b in batches]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# Model-config fields that shape the graph but no weight: a fine-tune (run.init_from) may change them.
FINE_TUNE_MUTABLE_FIELDS = ("max_neighbors", "core_repulsion", "core_margin")


def _model_config_diff(stored: Any, now: Any, ignore_elements: bool) -> Dict[str, Tuple[Any, Any]]:
    """Model-config fields that differ between a checkpoint and this run: {field: (checkpoint, now)}.
    ``ignore_elements``: this run takes its elements from the data and has not read them yet."""
    return {
        k: (v, getattr(now, k))
        for k, v in dataclasses.asdict(stored).items()
        if getattr(now, k) != v and not (k == "elements" and ignore_elements)
    }


class Trainer:
    """Trains an AllScAIP model from a :class:`TrainConfig`.

    ``callbacks`` are called as ``cb(trainer)`` after every optimizer step (after any
    checkpoint of that step). Only rank 0 writes files and prints.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        callbacks: Sequence[Callable[["Trainer"], None]] = (),
        log: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self._log = log or (lambda s: print(s, flush=True))
        self._own_pg = False
        self._setup_distributed()
        self.out_dir = Path(cfg.run.out_dir)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # global sampler batches of epoch ``self.epoch`` consumed
        self.best_val = math.inf
        self.history: List[Dict[str, Any]] = []
        self.element_references: Dict[int, float] = {}
        self.loss_scales: Dict[str, float] = {}
        self._sums = torch.zeros(len(_SUM_KEYS), dtype=torch.float64)
        self._window = [0.0, 0.0]  # training seconds and structures (all processes) since the last row
        self.stopped = False
        self._setup()

    # ------------------------------------------------------------------ set-up
    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    def _show_progress(self) -> bool:
        show = self.cfg.run.progress
        return self.is_main and (sys.stderr.isatty() if show is None else bool(show))

    def _setup_distributed(self) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = self.cfg.run.device
        use_cuda = torch.cuda.is_available() if dev == "auto" else dev.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise ConfigError(f"run.device={dev!r} but torch sees no CUDA GPU; use run.device=cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if world > 1 and not dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self._own_pg = True
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.is_main = self.rank == 0
        if use_cuda:
            self.device = torch.device(f"cuda:{local_rank}" if dev in ("auto", "cuda") else dev)
        else:
            self.device = torch.device("cpu")
        self.dtype = torch.float64 if self.cfg.run.dtype == "float64" else torch.float32

    def _setup(self) -> None:
        cfg = self.cfg
        ckpt_path = self.out_dir / "last.ckpt"
        payload = None
        if cfg.run.resume:
            if not ckpt_path.is_file():
                raise ConfigError(f"cannot resume: {ckpt_path} does not exist (run without --resume to start)")
            payload = load_checkpoint(ckpt_path)
            stored = model_config_of(payload)
            diff = _model_config_diff(stored, cfg.model, ignore_elements=cfg.elements_from_data)
            if diff:
                raise ConfigError(
                    f"cannot resume: the model config differs from the checkpoint's (checkpoint, now): {diff}"
                )
            self.cfg = cfg = dataclasses.replace(cfg, model=stored, elements_from_data=False)
        elif ckpt_path.exists() and not cfg.run.overwrite:
            raise ConfigError(
                f"{self.out_dir} already holds a run ({ckpt_path}); use --resume to continue it, "
                f"run.overwrite=true to start over, or another run.out_dir"
            )
        self._load_data()
        torch.manual_seed(cfg.optim.seed)
        self.model = AllScAIP(self.cfg.model).to(device=self.device, dtype=self.dtype)
        if self.world > 1:  # identical by seeding; make sure
            for t in itertools.chain(self.model.parameters(), self.model.buffers()):
                dist.broadcast(t.data, 0)
        if payload is None:
            self._fit_references()
            if cfg.run.init_from:
                self._init_weights(cfg.run.init_from)
            self._fit_core_radius()
        self.ema = copy.deepcopy(self.model)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad and p.numel() > 0]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.optim.lr,
        )
        self.sampler = MaxAtomsBatchSampler(
            self.train_set.natoms_per_frame,
            cfg.data.max_atoms,
            cfg.data.shuffle,
            cfg.optim.seed,
            num_replicas=self.world,
            rank=self.rank,
        )
        self.sampler.set_epoch(0)
        per_step = self.world * cfg.optim.accumulate
        self.steps_per_epoch = self.sampler.num_steps() // cfg.optim.accumulate
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training set packs into {len(self.sampler.global_batches())} batch(es) of <= {cfg.data.max_atoms} "
                f"atoms, fewer than one optimizer step needs ({self.world} process(es) x optim.accumulate="
                f"{cfg.optim.accumulate}); lower data.max_atoms or optim.accumulate"
            )
        self.total_steps = self.steps_per_epoch * cfg.optim.epochs
        o = cfg.optim
        self.density: Optional[DensityTerm] = None
        if o.density_constraint:
            self.density = DensityTerm.from_dataset(self.train_set, o.density_config_type, self.rank, self.world)
            self.log(
                f"density constraint: {len(self.density.indices)} ensemble frames (config_type "
                f"{o.density_config_type!r}), a projection every {o.density_every_steps} steps"
            )
        self.warmup = o.warmup_steps if o.warmup_steps is not None else int(round(o.warmup_fraction * self.total_steps))
        warmup, total, mr = self.warmup, self.total_steps, o.min_lr_ratio
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, warmup, total, mr))
        if payload is not None:
            self._restore(payload, per_step)
        nparams = sum(p.numel() for p in self.model.parameters())
        from ase.data import chemical_symbols

        self.log(
            f"model: {nparams:,} parameters, elements {[chemical_symbols[z] for z in self.cfg.model.elements]}, "
            f"cutoff {self.cfg.model.cutoff} Å, {self.cfg.run.dtype} on {self.device}"
            + (f", {self.world} processes" if self.world > 1 else "")
        )
        self.log(
            f"schedule: {self.steps_per_epoch} optimizer steps/epoch x {o.epochs} epochs = {self.total_steps} steps "
            f"(global batch: {per_step} batch(es) of <= {cfg.data.max_atoms} atoms), warm-up {self.warmup} steps"
        )
        if payload is not None:
            self.log(
                f"resumed from {ckpt_path}: epoch {self.epoch}, step {self.step}, batch {self.batch_in_epoch} of the epoch"
            )

    def _load_data(self) -> None:
        cfg = self.cfg
        elements = None if cfg.elements_from_data else set(cfg.model.elements)
        kw = dict(stream=cfg.data.stream, require_forces=cfg.optim.force_coef > 0, progress=self._show_progress())
        train = StructureDataset(cfg.data.train, elements=elements, **kw)
        if cfg.elements_from_data:
            found: set[int] = set()
            for i in tqdm(
                range(len(train)), desc="collecting elements", disable=not self._show_progress() or not train.streaming
            ):
                found.update(int(z) for z in train[i].numbers)
            self.cfg = cfg = cfg.with_elements(found)
            elements = set(cfg.model.elements)
        val = None
        if cfg.data.val:
            val = StructureDataset(cfg.data.val, elements=elements, **kw)
        elif cfg.data.val_fraction > 0 and len(train) >= 2:
            perm = np.random.default_rng(cfg.optim.seed).permutation(len(train))
            n_val = min(len(train) - 1, max(1, int(round(cfg.data.val_fraction * len(train)))))
            val = _Subset(train, np.sort(perm[:n_val]))
            train = _Subset(train, np.sort(perm[n_val:]))
        self.train_set, self.val_set = train, val
        nat = np.asarray(train.natoms_per_frame)
        msg = f"data: {len(train)} training structures ({int(nat.sum()):,} atoms)"
        if val is not None:
            msg += f", {len(val)} validation structures ({int(np.asarray(val.natoms_per_frame).sum()):,} atoms)"
        self.log(msg)

    def _init_weights(self, path: str) -> None:
        """Fine-tuning: the (EMA) weights and energy references of checkpoint ``path``, whose model
        config must equal this run's."""
        if not Path(path).is_file():
            raise ConfigError(f"run.init_from: {path} does not exist (give a training checkpoint .ckpt)")
        init = load_checkpoint(path)
        diff = _model_config_diff(model_config_of(init), self.cfg.model, ignore_elements=False)
        changed = {k: diff.pop(k) for k in FINE_TUNE_MUTABLE_FIELDS if k in diff}
        if diff:
            raise ConfigError(
                f"run.init_from: the model config differs from {path}'s (checkpoint, now): {diff}; "
                f"use the checkpoint's model section (only {', '.join(FINE_TUNE_MUTABLE_FIELDS)} may change)"
            )
        for k, (old, new) in changed.items():
            self.log(f"fine-tune changes model.{k}: {old} -> {new} (no weight depends on it)")
        state = init.get("ema_state") or init["model_state"]
        self.model.load_state_dict({k: v.to(device=self.device) for k, v in state.items()})
        self.log(f"initialised from {path} ({'EMA' if init.get('ema_state') else 'raw'} weights)")

    def _fit_core_radius(self) -> None:
        """Core-repulsion radii from the training set (``model.core_repulsion``): a wall below the
        shortest contact of each element pair, zero on every training frame. A fine-tune keeps
        the radii of its checkpoint when it has them."""
        from allscaip.train.core_radius import core_radius_from, describe, shortest_distances

        m = self.cfg.model
        if not m.core_repulsion:
            with torch.no_grad():
                self.model.core_radius.zero_()
            return
        if bool((self.model.core_radius > 0).any()):
            return
        frames = (self.train_set[i] for i in range(len(self.train_set)))
        shortest = shortest_distances(frames, m.elements, m.cutoff)
        radius = core_radius_from(shortest, m.elements, m.core_margin)
        with torch.no_grad():
            self.model.core_radius.copy_(torch.as_tensor(radius))
        self.log(
            "core repulsion (margin {}):\n  {}".format(
                m.core_margin, "\n  ".join(describe(radius, shortest, m.elements))
            )
        )

    def _fit_references(self) -> None:
        """Element references and loss scales from the training set (fresh runs only)."""
        elements = self.cfg.model.elements
        refs, e_rms = fit_references_and_rms(self.train_set, elements)
        n = len(self.train_set)
        idx = (
            np.arange(n)
            if n <= 2000
            else np.sort(np.random.default_rng(self.cfg.optim.seed).choice(n, 2000, replace=False))
        )
        f2 = fc = s2 = sc = 0.0
        for i in idx:
            res = self.train_set[int(i)].calc.results
            if res.get("forces") is not None:
                f = np.asarray(res["forces"], dtype=float)
                f2, fc = f2 + float((f**2).sum()), fc + f.size
            if res.get("stress") is not None:
                s = np.asarray(res["stress"], dtype=float)
                s2, sc = s2 + float((s**2).sum()), sc + s.size
        self.element_references = {int(z): float(refs[z]) for z in elements}
        self.loss_scales = {
            "energy": max(e_rms, ENERGY_SCALE_FLOOR),
            "force": max(math.sqrt(f2 / fc) if fc else 1.0, FORCE_SCALE_FLOOR),
            "stress": max(math.sqrt(s2 / sc) if sc else 1.0, STRESS_SCALE_FLOOR),
        }
        with torch.no_grad():
            self.model.element_energy.copy_(torch.tensor([refs[z] for z in elements], dtype=torch.float64))
            self.model.energy_scale.fill_(self.loss_scales["energy"])
        from ase.data import chemical_symbols

        refs_txt = ", ".join(f"{chemical_symbols[z]} {e:.4f}" for z, e in self.element_references.items())
        self.log(
            f"element references (eV): {refs_txt}; RMS after references {e_rms * 1000:.2f} meV/atom, "
            f"force RMS {self.loss_scales['force']:.3f} eV/Å"
        )

    # ------------------------------------------------------------------ state
    def payload(self) -> Dict[str, Any]:
        """Everything a checkpoint holds (see :mod:`allscaip.checkpoint`)."""
        np_state = np.random.get_state()
        py_state = random.getstate()
        rng = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "python": {
                "version": py_state[0],
                "state": torch.tensor(py_state[1], dtype=torch.int64),
                "gauss": py_state[2],
            },
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        return {
            "allscaip_version": allscaip.__version__,
            "model_config": dataclasses.asdict(self.cfg.model),
            "model_state": self.model.state_dict(),
            "ema_state": self.ema.state_dict(),
            "element_references": dict(self.element_references),
            "train_config": self.cfg.to_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.world,
            "accumulate": self.cfg.optim.accumulate,
            "rng_state": rng,
            "best_val": self.best_val,
            "metrics": list(self.history),
            "loss_scales": dict(self.loss_scales),
            "epoch_sums": {k: float(v) for k, v in zip(_SUM_KEYS, self._sums.tolist())},
        }

    def _restore(self, p: Dict[str, Any], per_step: int) -> None:
        self.model.load_state_dict(p["model_state"])
        self.ema.load_state_dict(p["ema_state"])
        self.optimizer.load_state_dict(p["optimizer_state"])
        self.scheduler.load_state_dict(p["scheduler_state"])
        self.epoch, self.step, self.batch_in_epoch = int(p["epoch"]), int(p["step"]), int(p["batch_in_epoch"])
        old = int(p.get("world_size", 1)) * int(p.get("accumulate", 1))
        if self.batch_in_epoch % per_step:
            raise ConfigError(
                f"cannot resume mid-epoch: the checkpoint consumed {self.batch_in_epoch} batches of epoch {self.epoch} "
                f"with a global batch of {old} batch(es); now it is {per_step} (processes x optim.accumulate)"
            )
        self.best_val = float(p["best_val"])
        self.history = list(p["metrics"])
        self.element_references = {int(k): float(v) for k, v in p["element_references"].items()}
        self.loss_scales = dict(p["loss_scales"])
        if self.is_main:
            sums = p.get("epoch_sums", {})
            self._sums = torch.tensor([float(sums.get(k, 0.0)) for k in _SUM_KEYS], dtype=torch.float64)
        rng = p["rng_state"]
        torch.set_rng_state(rng["torch"])
        n = rng["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
        py = rng["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def save(self, name: str = "last.ckpt", payload: Optional[Dict[str, Any]] = None) -> Optional[Path]:
        """Write a checkpoint into ``out_dir`` (rank 0 only; the epoch sums are reduced first)."""
        if payload is None:
            self._reduce_sums()
            payload = self.payload()
        if not self.is_main:
            return None
        return save_checkpoint(self.out_dir / name, payload)

    def _reduce_sums(self) -> None:
        """Fold the other processes' epoch sums into rank 0's."""
        if self.world > 1:
            s = self._sums.to(self.device)
            dist.all_reduce(s)
            self._sums = s.cpu() if self.is_main else torch.zeros_like(self._sums)

    # ------------------------------------------------------------------ training
    def fit(self) -> List[Dict[str, Any]]:
        """Train until ``optim.epochs`` (or ``run.max_steps``); returns the metrics history."""
        cfg = self.cfg
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_threads = torch.get_num_threads()
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        try:
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / "config.yaml").write_text(dump_config(cfg))
                self._rewrite_metrics_csv()
            if self.epoch >= cfg.optim.epochs:
                self.log(f"training already complete ({self.epoch} epochs)")
            while self.epoch < cfg.optim.epochs and not self.stopped:
                self._train_epoch()
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.set_num_threads(prev_threads)
        return self.history

    def close(self, synchronise: bool = True) -> None:
        """Tear down the process group if this trainer created it.

        With ``synchronise`` every rank first waits at a barrier, so no rank closes its gloo
        connections while another still writes its last checkpoint; a rank that tore down
        early made its peer abort at exit now and then. Pass ``False`` after an error, when
        the other ranks may never arrive.
        """
        if self._own_pg and dist.is_initialized():
            if synchronise:
                dist.barrier()
            dist.destroy_process_group()
            self._own_pg = False

    def _loader(self, dataset: Any, batches: Any, seed: int):
        gen = torch.Generator().manual_seed(seed)
        return make_loader(dataset, batches, dtype=self.dtype, num_workers=self.cfg.data.num_workers, generator=gen)

    def _train_epoch(self) -> None:
        cfg, A = self.cfg, self.cfg.optim.accumulate
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        n_micro = self.sampler.num_steps()
        n_steps = n_micro // A
        start = self.batch_in_epoch // self.world  # batches of this process already consumed
        mine = list(itertools.islice(iter(self.sampler), start, n_steps * A))
        it = iter(self._loader(self.train_set, _BatchList(mine), cfg.optim.seed * 100003 + epoch))
        bar = tqdm(
            total=n_steps,
            initial=start // A,
            desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
            unit="step",
            disable=not self._show_progress(),
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
            leave=False,
        )
        t0 = time.perf_counter()
        for _ in range(start // A, n_steps):
            if self.density is not None and self.step % cfg.optim.density_every_steps == 0:
                self.density.project(self.model, self.params, self.device, self.dtype)
            micro = [next(it).to(self.device) for _ in range(A)]
            loss = self._optimizer_step(micro)
            self.step += 1
            self.batch_in_epoch += A * self.world
            bar.update(1)
            if self.step % cfg.run.log_every == 0:
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
            if cfg.run.checkpoint_every_steps and self.step % cfg.run.checkpoint_every_steps == 0:
                self.save()
            for cb in self.callbacks:
                cb(self)
            if cfg.run.max_steps is not None and self.step >= cfg.run.max_steps:
                self.stopped = True
                break
        bar.close()
        self._window[0] += time.perf_counter() - t0
        if self.stopped and self.batch_in_epoch < n_steps * A * self.world:
            self.save()
            self.log(
                f"stopped at run.max_steps={cfg.run.max_steps} (epoch {epoch + 1}, step {self.step}); checkpoint {self.out_dir / 'last.ckpt'}"
            )
            return
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        if self.epoch % cfg.run.eval_every_epochs and self.epoch < cfg.optim.epochs and not self.stopped:
            return
        self._end_of_eval_period()

    def _end_of_eval_period(self) -> None:
        """Validate, append a metrics row, write last.ckpt (and best.ckpt when improved)."""
        cfg = self.cfg
        self._reduce_sums()
        s = dict(zip(_SUM_KEYS, self._sums.tolist()))
        elapsed, structures = self._window
        shift = None
        if self.density is not None:  # the EMA average of projected weights drifts off the constraint
            ema_params = [p for p in self.ema.parameters() if p.numel() > 0]
            self.density.project(self.ema, ema_params, self.device, self.dtype, max_iter=3, tol=0.01)
            shift = -self.density.evaluate(self.ema, self.device, self.dtype)
        val = self.validate()
        row: Dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": s["loss"] / max(s["steps"], 1.0),
            "train_energy_mae_meV_atom": 1000.0 * s["energy_abs"] / max(s["n_sys"], 1.0),
            "train_force_mae_meV_A": 1000.0 * s["force_abs"] / s["n_force"] if s["n_force"] else None,
            **val,
            "density_shift_pct": shift,
            "train_time_s": elapsed,
            "structures_per_s": structures / max(elapsed, 1e-9),
        }
        self.history.append(row)
        self._sums.zero_()
        self._window = [0.0, 0.0]
        key = next(
            (k for k in ("val_force_mae_meV_A", "val_energy_mae_meV_atom", "train_loss") if row.get(k) is not None),
            "train_loss",
        )
        improved = row[key] < self.best_val
        if improved:
            self.best_val = float(row[key])
        payload = self.payload()
        self.save("last.ckpt", payload)
        if improved:
            self.save("best.ckpt", payload)
        if self.is_main:
            self._append_metrics(row)
        self.log(self._format_row(row, improved))
        if self.stopped:
            self.log(f"stopped at run.max_steps={cfg.run.max_steps} (epoch {self.epoch}, step {self.step})")

    def _optimizer_step(self, micro: List[AtomsBatch]) -> float:
        o = self.cfg.optim
        use_stress = [o.stress_coef > 0 and b.stress is not None and bool(self._stress_rows(b).any()) for b in micro]
        counts = torch.tensor(
            [
                sum(b.num_systems for b in micro),
                sum(int(b.natoms.sum()) for b in micro),
                sum(int(self._stress_rows(b).sum()) for b, u in zip(micro, use_stress) if u),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        if self.world > 1:
            dist.all_reduce(counts)
        n_sys, n_atoms, n_stress = counts.tolist()
        self._window[1] += n_sys
        sc = self.loss_scales
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        stats = torch.zeros(len(_SUM_KEYS), dtype=torch.float64)
        for b, u in zip(micro, use_stress):
            # fused SDPA kernels (flash / efficient) have no double backward: the force loss needs it
            with sdpa_kernel(SDPBackend.MATH):
                out = compute_properties(self.model, b, forces=True, stress=u, training=True)
            de = (out["energy"] - b.energy) / b.natoms.to(out["energy"].dtype)
            loss = o.energy_coef / (sc["energy"] * n_sys) * de.abs().sum()
            if b.forces is not None:
                dfv = out["forces"] - b.forces
                loss = loss + o.force_coef / (sc["force"] * n_atoms) * torch.linalg.vector_norm(dfv, dim=1).sum()
                stats[3] += float(dfv.detach().abs().sum())
                stats[4] += dfv.numel()
            if u:
                rows = self._stress_rows(b)
                ds = (out["stress"][rows] - b.stress[rows]) / sc["stress"]
                loss = loss + o.stress_coef / n_stress * ds.pow(2).mean(dim=(1, 2)).sum()
            loss.backward()
            loss_sum += loss.detach().double()
            stats[1] += float(de.detach().abs().sum())
            stats[2] += b.num_systems
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world > 1:
            flat = torch.cat([p.grad.reshape(-1).double() for p in self.params] + [loss_sum.reshape(1)])
            dist.all_reduce(flat)
            offset = 0
            for p in self.params:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
            loss_sum = flat[-1]
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._update_ema()
        loss_value = float(loss_sum)
        stats[0] = loss_value / self.world  # rank sums are reduced at epoch end
        stats[5] = 1.0 / self.world
        self._sums += stats
        return loss_value

    @staticmethod
    def _stress_rows(b: AtomsBatch) -> torch.Tensor:
        if b.stress is None:
            return torch.zeros(b.num_systems, dtype=torch.bool, device=b.natoms.device)
        rows = b.pbc.all(dim=1)
        return rows & b.stress_mask if b.stress_mask is not None else rows

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.cfg.optim.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1.0 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # ------------------------------------------------------------------ validation
    def validate(self, model: Optional[AllScAIP] = None) -> Dict[str, Optional[float]]:
        """Validation errors of the EMA model (meV/atom, meV/Å, meV/Å^3), reduced over processes."""
        if self.val_set is None:
            return {}
        model = (model or self.ema).eval()
        sampler = MaxAtomsBatchSampler(self.val_set.natoms_per_frame, self.cfg.data.max_atoms, False, 0)
        mine = sampler.global_batches()[self.rank :: self.world]
        # Σ|ΔE|/N, Σ(ΔE/N)^2, systems, Σ|ΔF|, ΣΔF^2, force comps, Σ|ΔS|, stress comps
        sums = torch.zeros(8, dtype=torch.float64, device=self.device)
        for b in self._loader(self.val_set, _BatchList(mine), 0):
            b = b.to(self.device)
            rows = self._stress_rows(b)
            out = compute_properties(model, b, forces=b.forces is not None, stress=bool(rows.any()))
            de = ((out["energy"] - b.energy) / b.natoms.to(out["energy"].dtype)).double()
            sums[0] += de.abs().sum()
            sums[1] += de.pow(2).sum()
            sums[2] += b.num_systems
            if b.forces is not None:
                df = (out["forces"] - b.forces).double()
                sums[3] += df.abs().sum()
                sums[4] += df.pow(2).sum()
                sums[5] += df.numel()
            if rows.any():
                ds = (out["stress"][rows] - b.stress[rows]).double()
                sums[6] += ds.abs().sum()
                sums[7] += ds.numel()
        if self.world > 1:
            dist.all_reduce(sums)
        s = sums.tolist()
        return {
            "val_energy_mae_meV_atom": 1000.0 * s[0] / s[2] if s[2] else None,
            "val_energy_rmse_meV_atom": 1000.0 * math.sqrt(s[1] / s[2]) if s[2] else None,
            "val_force_mae_meV_A": 1000.0 * s[3] / s[5] if s[5] else None,
            "val_force_rmse_meV_A": 1000.0 * math.sqrt(s[4] / s[5]) if s[5] else None,
            "val_stress_mae_meV_A3": 1000.0 * s[6] / s[7] if s[7] else None,
        }

    # ------------------------------------------------------------------ metrics
    def _format_row(self, r: Dict[str, Any], improved: bool) -> str:
        def f(k: str, fmt: str = ".2f") -> str:
            return "-" if r.get(k) is None else format(r[k], fmt)

        line = (
            f"epoch {r['epoch']}/{self.cfg.optim.epochs} step {r['step']} lr {r['lr']:.3g} loss {r['train_loss']:.4g} | "
            f"train E {f('train_energy_mae_meV_atom')} meV/atom F {f('train_force_mae_meV_A', '.1f')} meV/Å"
        )
        if self.val_set is not None:
            line += (
                f" | val E {f('val_energy_mae_meV_atom')} meV/atom F MAE {f('val_force_mae_meV_A', '.1f')} "
                f"RMSE {f('val_force_rmse_meV_A', '.1f')} meV/Å"
            )
            if r.get("val_stress_mae_meV_A3") is not None:
                line += f" S {f('val_stress_mae_meV_A3', '.3f')} meV/Å^3"
        if r.get("density_shift_pct") is not None:
            line += f" | density shift {f('density_shift_pct', '+.2f')} %"
        line += f" | {r['train_time_s']:.1f} s, {r['structures_per_s']:.1f} structures/s"
        return line + (" *" if improved else "")

    def _append_metrics(self, row: Dict[str, Any]) -> None:
        path = self.out_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})

    def _rewrite_metrics_csv(self) -> None:
        """metrics.csv = the checkpoint's history (drops rows of epochs lost by a kill)."""
        path = self.out_dir / "metrics.csv"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in self.history:
                w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
        os.replace(tmp, path)


def train(cfg: TrainConfig, callbacks: Sequence[Callable[[Trainer], None]] = ()) -> Trainer:
    """Build a :class:`Trainer`, run it, and return it."""
    trainer = Trainer(cfg, callbacks)
    finished = False
    try:
        trainer.fit()
        finished = True
    finally:
        trainer.close(synchronise=finished)
    return trainer
