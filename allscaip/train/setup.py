"""Training set-up: processes and devices (DDP), data sets and loaders, optimizer and schedule.

Multi-process runs start under ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on CUDA.
The processes keep identical weights by summing their gradients with one all-reduce per
optimizer step (:func:`all_reduce_gradients`), not by wrapping the model.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from allscaip.config_schema import ConfigError
from allscaip.data import MaxAtomsBatchSampler, StructureDataset, make_loader
from allscaip.dtypes import DTYPES
from allscaip.train.config import OptimConfig, RunConfig, TrainConfig

# ----------------------------------------------------------------------------- processes


@dataclass
class Placement:
    """Where this process trains: its rank among ``world`` processes, device and dtype."""

    world: int
    rank: int
    device: torch.device
    dtype: torch.dtype
    owns_process_group: bool  # this process created the process group (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(run: RunConfig) -> Placement:
    """Join (or create, under ``torchrun``) the process group and pick the device of ``run.device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = run.device
    use_cuda = torch.cuda.is_available() if dev == "auto" else dev.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"run.device={dev!r} but torch sees no CUDA GPU; use run.device=cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    if use_cuda:
        device = torch.device(f"cuda:{local_rank}" if dev in ("auto", "cuda") else dev)
    else:
        device = torch.device("cpu")
    return Placement(
        world=dist.get_world_size() if dist.is_initialized() else 1,
        rank=dist.get_rank() if dist.is_initialized() else 0,
        device=device,
        dtype=DTYPES[run.dtype],
        owns_process_group=owns,
    )


def close_distributed(placement: Placement, synchronise: bool) -> None:
    """Tear down the process group if ``placement`` created it (after a barrier with ``synchronise``)."""
    if placement.owns_process_group and dist.is_initialized():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()
        placement.owns_process_group = False


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (identical by seeding already; make sure)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        dist.broadcast(t.data, 0)


def all_reduce_gradients(params: Sequence[torch.Tensor], loss_sum: torch.Tensor) -> torch.Tensor:
    """Sum the gradients of ``params`` and ``loss_sum`` over the processes in one all-reduce
    (float64); returns the summed loss."""
    flat = torch.cat([p.grad.reshape(-1).double() for p in params] + [loss_sum.reshape(1)])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
    return flat[-1]


# ----------------------------------------------------------------------------- data


class Subset:
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


class BatchList:
    """A fixed list of index batches usable as a DataLoader ``batch_sampler``."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [list(b) for b in batches]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def load_datasets(
    cfg: TrainConfig, show_progress: bool, log: Callable[[str], None]
) -> Tuple[TrainConfig, Any, Optional[Any]]:
    """The training and validation sets of ``cfg`` (validation: ``data.val`` or a held-out
    ``data.val_fraction`` of the training set), and ``cfg`` with ``model.elements`` filled in
    from the data when it was omitted."""
    elements = None if cfg.elements_from_data else set(cfg.model.elements)
    kw = dict(stream=cfg.data.stream, require_forces=cfg.optim.force_coef > 0, progress=show_progress)
    train = StructureDataset(cfg.data.train, elements=elements, **kw)
    if cfg.elements_from_data:
        found: set[int] = set()
        for i in tqdm(range(len(train)), desc="collecting elements", disable=not show_progress or not train.streaming):
            found.update(int(z) for z in train[i].numbers)
        cfg = cfg.with_elements(found)
        elements = set(cfg.model.elements)
    val = None
    if cfg.data.val:
        val = StructureDataset(cfg.data.val, elements=elements, **kw)
    elif cfg.data.val_fraction > 0 and len(train) >= 2:
        perm = np.random.default_rng(cfg.optim.seed).permutation(len(train))
        n_val = min(len(train) - 1, max(1, int(round(cfg.data.val_fraction * len(train)))))
        val = Subset(train, np.sort(perm[:n_val]))
        train = Subset(train, np.sort(perm[n_val:]))
    nat = np.asarray(train.natoms_per_frame)
    msg = f"data: {len(train)} training structures ({int(nat.sum()):,} atoms)"
    if val is not None:
        msg += f", {len(val)} validation structures ({int(np.asarray(val.natoms_per_frame).sum()):,} atoms)"
    log(msg)
    return cfg, train, val


def batch_loader(dataset: Any, batches: Sequence[Sequence[int]], seed: int, dtype: torch.dtype, num_workers: int):
    """A DataLoader over the index ``batches`` of ``dataset`` (workers seeded from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return make_loader(dataset, BatchList(batches), dtype=dtype, num_workers=num_workers, generator=gen)


def training_sampler(train_set: Any, cfg: TrainConfig, placement: Placement) -> Tuple[MaxAtomsBatchSampler, int]:
    """The batch sampler of this process and the optimizer steps per epoch."""
    sampler = MaxAtomsBatchSampler(
        train_set.natoms_per_frame,
        cfg.data.max_atoms,
        cfg.data.shuffle,
        cfg.optim.seed,
        num_replicas=placement.world,
        rank=placement.rank,
    )
    sampler.set_epoch(0)
    steps_per_epoch = sampler.num_steps() // cfg.optim.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(
            f"the training set packs into {len(sampler.global_batches())} batch(es) of <= {cfg.data.max_atoms} "
            f"atoms, fewer than one optimizer step needs ({placement.world} process(es) x optim.accumulate="
            f"{cfg.optim.accumulate}); lower data.max_atoms or optim.accumulate"
        )
    return sampler, steps_per_epoch


# ----------------------------------------------------------------------------- optimizer and schedule


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> Tuple[List[torch.Tensor], torch.optim.AdamW]:
    """The trainable parameters and AdamW over them, with weight decay on weight matrices only."""
    params = [p for p in model.parameters() if p.requires_grad and p.numel() > 0]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr,
    )
    return params, optimizer


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> Tuple[int, torch.optim.lr_scheduler.LambdaLR]:
    """The warm-up length (steps) and the per-step learning-rate schedule of :func:`lr_factor`."""
    warmup = optim.warmup_steps if optim.warmup_steps is not None else int(round(optim.warmup_fraction * total_steps))
    min_ratio = optim.min_lr_ratio
    # a plain function, not a callable object: LambdaLR then stores no state for it in the checkpoint
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps, min_ratio))
    return warmup, scheduler
