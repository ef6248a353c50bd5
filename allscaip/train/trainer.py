"""The training loop: one optimizer step after another, validation and checkpoints at the end of
each evaluation period.

Each optimizer step sums the gradients of the loss (:mod:`allscaip.train.loss`) over its
micro-batches and the processes (one all-reduce, :mod:`allscaip.train.setup`), clips them, then
AdamW steps; the learning rate warms up linearly and decays as a cosine per optimizer step; an
EMA of the weights (:mod:`allscaip.train.ema`) is validated (:mod:`allscaip.train.validation`)
and exported. Loss terms beyond the labels (the density constraint) plug in through
:mod:`allscaip.train.terms`. The pieces a fresh run fits from its data are in
:mod:`allscaip.train.fitting`, the metrics in :mod:`allscaip.train.metrics`. ``run.init_from`` a
checkpoint converted from fairchem trains fairchem's network instead
(:mod:`allscaip.train.fairchem_finetune`).

Resume: ``last.ckpt`` (:mod:`allscaip.train.state`) holds weights, EMA, optimizer, scheduler,
RNG states and the position in the epoch (sampler batches consumed); the sampler's batch list
depends only on (seed, epoch), so a resumed run skips the consumed batches and ends
bit-for-bit with the weights of an uninterrupted run (same device, dtype and thread count).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from allscaip.checkpoint import FAIRCHEM_FAMILY, OUR_FAMILY, save_checkpoint
from allscaip.data.batch import AtomsBatch
from allscaip.model import AllScAIP
from allscaip.train import setup
from allscaip.train.config import TrainConfig, dump_config
from allscaip.train.ema import ema_copy, update_ema
from allscaip.train.ensemble import DensityTerm
from allscaip.train.fairchem_finetune import (
    check_fairchem_config,
    converted_start,
    describe,
    fairchem_loss_scales,
    fairchem_training_model,
)
from allscaip.train.finite_step import NonFiniteLossError, non_finite_message, step_is_finite
from allscaip.train.fitting import fit_core_radius_of_model, fit_references
from allscaip.train.loss import micro_batch_loss, step_counts, stress_flags
from allscaip.train.metrics import (
    SUM_KEYS,
    append_metrics,
    format_row,
    metrics_row,
    rewrite_metrics,
    selection_value,
)
from allscaip.train.state import (
    load_initial_weights,
    restore_training_state,
    resume_payload,
    training_payload,
)
from allscaip.train.terms import TrainingTerm, terms_from_config
from allscaip.train.validation import validate

__all__ = ["Trainer", "train"]


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
        self.placement = setup.init_distributed(cfg.run)
        self.world, self.rank, self.is_main = self.placement.world, self.placement.rank, self.placement.is_main
        self.device, self.dtype = self.placement.device, self.placement.dtype
        self.out_dir = Path(cfg.run.out_dir)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # global sampler batches of epoch ``self.epoch`` consumed
        self.best_val = math.inf
        self.history: List[Dict[str, Any]] = []
        self.element_references: Dict[int, float] = {}
        self.loss_scales: Dict[str, float] = {}
        self.sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64)  # this process's, since the last row
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

    def _setup(self) -> None:
        self.cfg, payload = resume_payload(self.cfg, self.out_dir)
        self.cfg, self.train_set, self.val_set = setup.load_datasets(self.cfg, self._show_progress(), self.log)
        torch.manual_seed(self.cfg.optim.seed)
        converted = converted_start(self.cfg, payload)
        #: the network trained: our AllScAIP, or a converted fairchem AllScAIP (its stored config)
        self.model_family = OUR_FAMILY if converted is None else FAIRCHEM_FAMILY
        self.fairchem_config: Optional[Dict[str, Any]] = None
        if converted is not None:
            check_fairchem_config(self.cfg, self.cfg.run.init_from or str(self.out_dir / "last.ckpt"))
            self.model, self.cfg = fairchem_training_model(converted, self.cfg, self.device, self.dtype, self.log)
            self.fairchem_config = converted["model_config"]
        else:
            self.model = AllScAIP(self.cfg.model).to(device=self.device, dtype=self.dtype)
        cfg, o = self.cfg, self.cfg.optim
        if self.world > 1:
            setup.broadcast_module(self.model)
        if payload is None and converted is not None:
            self.element_references, self.loss_scales = fairchem_loss_scales(
                self.model, self.train_set, cfg.model.elements, o.seed, self.log
            )
            self.log(f"initialised from {cfg.run.init_from} (EMA weights)")
        elif payload is None:
            self.element_references, self.loss_scales = fit_references(
                self.model, self.train_set, cfg.model.elements, o.seed, self.log, o.energy_scale
            )
            if cfg.run.init_from:
                load_initial_weights(self.model, cfg.run.init_from, cfg.model, self.device, self.log)
            fit_core_radius_of_model(self.model, self.train_set, cfg.model, self.log)
        self.ema = ema_copy(self.model)
        self.params, self.optimizer = setup.make_optimizer(self.model, o)
        self.sampler, self.steps_per_epoch = setup.training_sampler(self.train_set, cfg, self.placement)
        per_step = self.world * o.accumulate
        self.total_steps = self.steps_per_epoch * o.epochs
        self.terms: List[TrainingTerm] = terms_from_config(self.train_set, o, self.rank, self.world, self.log)
        self.density: Optional[DensityTerm] = next((t for t in self.terms if isinstance(t, DensityTerm)), None)
        self.warmup, self.scheduler = setup.make_scheduler(self.optimizer, o, self.total_steps)
        if payload is not None:
            restore_training_state(self, payload, per_step)
        nparams = sum(p.numel() for p in self.model.parameters())
        what = f"cutoff {cfg.model.cutoff} Å" if converted is None else describe(self.model, self.fairchem_config)
        self.log(
            f"model: {nparams:,} parameters, elements {[chemical_symbols[z] for z in cfg.model.elements]}, "
            f"{what}, {cfg.run.dtype} on {self.device}" + (f", {self.world} processes" if self.world > 1 else "")
        )
        self.log(
            f"schedule: {self.steps_per_epoch} optimizer steps/epoch x {o.epochs} epochs = {self.total_steps} steps "
            f"(global batch: {per_step} batch(es) of <= {cfg.data.max_atoms} atoms), warm-up {self.warmup} steps"
        )
        if payload is not None:
            self.log(
                f"resumed from {self.out_dir / 'last.ckpt'}: epoch {self.epoch}, step {self.step}, "
                f"batch {self.batch_in_epoch} of the epoch"
            )

    # ------------------------------------------------------------------ checkpoints
    def model_config_payload(self) -> Dict[str, Any]:
        """The checkpoint's ``model_config``: our ModelConfig, or the converted fairchem model's config."""
        return dict(self.fairchem_config) if self.fairchem_config is not None else dataclasses.asdict(self.cfg.model)

    def payload(self) -> Dict[str, Any]:
        """Everything a checkpoint holds (see :mod:`allscaip.checkpoint`)."""
        return training_payload(self)

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
            s = self.sums.to(self.device)
            torch.distributed.all_reduce(s)
            self.sums = s.cpu() if self.is_main else torch.zeros_like(self.sums)

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
                rewrite_metrics(self.out_dir / "metrics.csv", self.history)
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
        setup.close_distributed(self.placement, synchronise)

    def _loader(self, dataset: Any, batches: Sequence[Sequence[int]], seed: int):
        return setup.batch_loader(dataset, batches, seed, self.dtype, self.cfg.data.num_workers)

    def _train_epoch(self) -> None:
        cfg, A = self.cfg, self.cfg.optim.accumulate
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        n_micro = self.sampler.num_steps()
        n_steps = n_micro // A
        start = self.batch_in_epoch // self.world  # batches of this process already consumed
        mine = list(itertools.islice(iter(self.sampler), start, n_steps * A))
        it = iter(self._loader(self.train_set, mine, cfg.optim.seed * 100003 + epoch))
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
        for k in range(start // A, n_steps):
            for term in self.terms:
                term.before_step(self.step, self.model, self.params, self.device, self.dtype)
            micro = [next(it).to(self.device) for _ in range(A)]
            frames = [i for batch in mine[(k - start // A) * A : (k - start // A + 1) * A] for i in batch]
            loss = self._optimizer_step(micro, frames)
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
                f"stopped at run.max_steps={cfg.run.max_steps} (epoch {epoch + 1}, step {self.step}); "
                f"checkpoint {self.out_dir / 'last.ckpt'}"
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
        elapsed, structures = self._window
        term_values: Dict[str, Optional[float]] = {}
        for term in self.terms:
            term_values.update(term.before_validation(self.ema, self.device, self.dtype))
        row = metrics_row(
            self.epoch,
            self.step,
            self.optimizer.param_groups[0]["lr"],
            self.sums.tolist(),
            self.validate(),
            term_values,
            elapsed,
            structures,
        )
        self.history.append(row)
        self.sums.zero_()
        self._window = [0.0, 0.0]
        improved = selection_value(row) < self.best_val
        if improved:
            self.best_val = float(selection_value(row))
        payload = self.payload()
        self.save("last.ckpt", payload)
        if improved:
            self.save("best.ckpt", payload)
        if self.is_main:
            append_metrics(self.out_dir / "metrics.csv", row)
        self.log(format_row(row, cfg.optim.epochs, self.val_set is not None, improved))
        if self.stopped:
            self.log(f"stopped at run.max_steps={cfg.run.max_steps} (epoch {self.epoch}, step {self.step})")

    def _optimizer_step(self, micro: List[AtomsBatch], frames: Sequence[int] = ()) -> float:
        o = self.cfg.optim
        use_stress = stress_flags(micro, o.stress_coef)
        counts = step_counts(micro, use_stress, self.world, self.device)
        self._window[1] += counts[0]
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        stats = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
        for b, u in zip(micro, use_stress):
            loss = micro_batch_loss(self.model, b, u, o, self.loss_scales, counts, stats)
            loss.backward()
            loss_sum += loss.detach().double()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world > 1:
            loss_sum = setup.all_reduce_gradients(self.params, loss_sum)
        if not step_is_finite(loss_sum, self.params):  # reduced: every process stops here
            sources = [self.train_set.source(i) for i in frames] if hasattr(self.train_set, "source") else []
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(non_finite_message(self.epoch, self.step, sources, str(self.out_dir), self.world))
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        update_ema(self.ema, self.model, self.step, o.ema_decay)
        loss_value = float(loss_sum)
        stats[0] = loss_value / self.world  # rank sums are reduced at epoch end
        stats[5] = 1.0 / self.world
        self.sums += stats
        return loss_value

    # ------------------------------------------------------------------ validation
    def validate(self, model: Optional[AllScAIP] = None) -> Dict[str, Optional[float]]:
        """Validation errors of the EMA model (meV/atom, meV/Å, meV/Å^3), reduced over processes."""
        if self.val_set is None:
            return {}
        return validate(
            model or self.ema,
            self.val_set,
            self.cfg.data.max_atoms,
            self.rank,
            self.world,
            self.device,
            lambda dataset, batches: self._loader(dataset, batches, 0),
        )


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
