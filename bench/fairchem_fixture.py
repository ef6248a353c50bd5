"""Build random-weight fairchem AllScAIP inference checkpoints and record fairchem's own numbers.

Runs in the fairchem environment (``bash bench/setup_fairchem_venv.sh``), not the project's:

    .fcvenv/bin/python bench/fairchem_fixture.py --out tests/fixtures/fairchem

Writes, under ``--out``:

* ``allscaip_md_conserving.pt`` and ``allscaip_md_direct.pt``: pickled
  ``MLIPInferenceCheckpoint`` objects, built as fairchem's training tooling builds them
  (``HydraModel`` config, raw and EMA state dicts, ``tasks_config`` as a list of hydra task
  configs), so that ``MLIPPredictUnit`` / ``FAIRChemCalculator`` load them like the published
  ``allscaip-md-*-all-omol`` files;
* ``reference.json``: the settings, versions, structures (positions, numbers, cell, pbc, charge,
  spin) and, per checkpoint and structure, fairchem's energy (eV), forces (eV/Å) and, for the
  conserving model, stress (eV/Å³, 3x3) from ``FAIRChemCalculator(task_name='omol')``.

The backbone has the published "md" switches (``md_NeNo``: node attention on, no frequency mask, no
sincx mask, soft kNN with low-memory ranks) at a small size. The EMA weights (what fairchem
evaluates) differ from the raw weights, every parameter is perturbed away from its initial value
(zero biases, unit norms and 1/L residual scales would hide a converter that drops them), and the
energy task has non-zero element references and a non-unit normaliser, so that a converter that
skips any of these misses the reference numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import hydra  # this script runs in the fairchem environment only (bench/setup_fairchem_venv.sh)
import numpy as np
import torch
from ase import Atoms
from ase.build import molecule
from fairchem.core.calculate.ase_calculator import FAIRChemCalculator
from fairchem.core.units.mlip_unit.api.inference import InferenceSettings, MLIPInferenceCheckpoint
from fairchem.core.units.mlip_unit.predict import MLIPPredictUnit
from water_boxes import water_box  # puts the checkout on sys.path when allscaip is not installed here

DATASET = "omol"
BACKBONE = "fairchem.core.models.allscaip.AllScAIP.AllScAIPBackbone"
GRAD_HEAD = "fairchem.core.models.allscaip.AllScAIP.AllScAIPGradientEnergyForceStressHead"
ENERGY_HEAD = "fairchem.core.models.allscaip.AllScAIP.AllScAIPEnergyHead"
DIRECT_FORCE_HEAD = "fairchem.core.models.allscaip.AllScAIP.AllScAIPDirectForceHead"
DATASET_WRAPPER = "fairchem.core.models.uma.escn_moe.DatasetSpecificSingleHeadWrapper"
NORMALIZER_RMSD = 1.433569  # the published OMol25 runs' normalizer_rmsd (configs/allscaip/omol_all*.yml)
MAX_Z = 100  # element references cover Z = 0..MAX_Z (OMol25 reaches Z = 83)
PARAM_NOISE = 0.05  # std of the perturbation added to every parameter (see the module docstring)
EMA_OFFSET = 0.02  # std of the extra noise that makes the raw weights differ from the EMA ones
FLOAT64_NOTE = (
    "fairchem-core 2.24's AllScAIP does not run in float64: the backbone casts the node representations "
    "it hands to the heads to float32 (AllScAIPBackbone.compiled_forward), so float64 heads fail with a "
    "dtype mismatch; and the periodic image offsets are built in torch's default dtype (float32 unless "
    "changed). The reference numbers are therefore float32."
)
MOLECULE_JITTER = 0.05  # Å, breaks the symmetry of the ASE reference geometries


def backbone_settings(args: argparse.Namespace, direct: bool) -> dict:
    """Backbone keyword arguments: the published md_NeNo switches at the given small size."""
    return {
        "model": BACKBONE,
        "num_layers": args.layers,
        "hidden_size": args.hidden,
        "direct_forces": direct,
        "regress_forces": True,
        "regress_stress": False,  # as published; the generator overrides it to read stress
        "use_compile": False,
        "use_padding": False,
        "dataset_list": [DATASET],
        "use_node_path": True,
        "use_freq_mask": False,
        "use_sincx_mask": False,
        "max_num_elements": 110,
        "max_batch_size": 1,
        "max_atoms": 64,  # used only with padding (compile)
        "max_radius": args.cutoff,
        "knn_k": args.knn_k,
        "knn_soft": True,
        "knn_sigmoid_scale": 0.2,
        "knn_lse_scale": 0.1,
        "knn_use_low_mem": True,
        "knn_pad_size": 50,
        "atten_name": "memory_efficient" if direct else "math",
        "atten_num_heads": args.heads,
        # keys the published configs carry that fairchem-core 2.24's AllScAIP ignores
        "use_pbc": False,
        "float32_matmul_precision": "high",
    }


def model_config(args: argparse.Namespace, direct: bool) -> dict:
    """HydraModel config with the heads of the published OMol25 runs (configs/allscaip/omol_all*.yml)."""
    if direct:
        heads = {"omol_energy": {"module": ENERGY_HEAD}, "omol_forces": {"module": DIRECT_FORCE_HEAD}}
        passthrough = False
    else:
        heads = {
            "energyandforcehead": {
                "module": DATASET_WRAPPER,
                "head_cls": GRAD_HEAD,
                "head_kwargs": {"wrap_property": False},
                "dataset_names": [DATASET],
            }
        }
        passthrough = True
    return {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": backbone_settings(args, direct),
        "heads": heads,
        "pass_through_head_outputs": passthrough,
        "otf_graph": True,
    }


def task(name: str, prop: str, level: str, dim: list[int], refs: list[float] | None) -> dict:
    """One hydra task config as fairchem's training configs write it."""
    config = {
        "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task",
        "name": name,
        "level": level,
        "property": prop,
        "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim, "dtype": "float32"},
        "normalizer": {
            "_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
            "mean": 0.0,
            "rmsd": NORMALIZER_RMSD,
        },
        "datasets": [DATASET],
    }
    if refs is not None:
        config["element_references"] = {
            "_target_": "fairchem.core.modules.normalization.element_references.ElementReferences",
            "element_references": {"_target_": "torch.DoubleTensor", "_args_": [refs]},
        }
    return config


def element_references(seed: int) -> list[float]:
    """Random per-element reference energies (eV), Z = 0..MAX_Z, roughly -13.6 Z^1.5 eV in size."""
    rng = np.random.default_rng(seed)
    z = np.arange(MAX_Z + 1, dtype=float)
    return [float(v) for v in -13.6 * z**1.5 * rng.uniform(0.9, 1.1, z.shape)]


def write_checkpoint(args: argparse.Namespace, direct: bool, path: Path) -> None:
    config = model_config(args, direct)
    torch.manual_seed(args.seed + (1 if direct else 0))
    model = hydra.utils.instantiate(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PARAM_NOISE * torch.randn_like(p))
    ema = torch.optim.swa_utils.AveragedModel(model)  # EMA copy: what fairchem evaluates
    with torch.no_grad():
        for p in model.parameters():  # raw weights differ from the EMA ones
            p.add_(EMA_OFFSET * torch.randn_like(p))
    tasks = [
        task(f"{DATASET}_energy", "energy", "system", [1], element_references(args.seed)),
        task(f"{DATASET}_forces", "forces", "atom", [3], None),
    ]
    checkpoint = MLIPInferenceCheckpoint(
        model_config=config,
        model_state_dict=model.state_dict(),
        ema_state_dict=ema.state_dict(),
        tasks_config=tasks,
    )
    torch.save(checkpoint, path)


def structures(seed: int) -> dict[str, Atoms]:
    """A neutral molecule, a charged radical and a small periodic water box."""
    rng = np.random.default_rng(seed)
    neutral = molecule("CH3CH2OH")
    neutral.positions += rng.normal(0.0, MOLECULE_JITTER, neutral.positions.shape)
    neutral.info.update(charge=0, spin=1)
    cation = molecule("C6H6")
    cation.positions += rng.normal(0.0, MOLECULE_JITTER, cation.positions.shape)
    cation.info.update(charge=1, spin=2)
    box = water_box(8, seed=seed)
    box.info.update(charge=0, spin=1)
    return {"ethanol": neutral, "benzene_cation_doublet": cation, "water8_periodic": box}


def calculator(path: Path, dtype: torch.dtype, stress: bool):
    settings = InferenceSettings(
        tf32=False,
        activation_checkpointing=False,
        merge_mole=False,
        compile=False,
        external_graph_gen=False,
        base_precision_dtype=dtype,
        predict_untrained_stress={DATASET} if stress else set(),
    )
    overrides = {"backbone": {"regress_stress": True}} if stress else None
    unit = MLIPPredictUnit(str(path), device="cpu", inference_settings=settings, overrides=overrides)
    return FAIRChemCalculator(unit, task_name=DATASET)


def evaluate(path: Path, atoms_by_name: dict[str, Atoms], dtype: torch.dtype, stress: bool) -> dict:
    calc = calculator(path, dtype, stress)
    out = {}
    for name, atoms in atoms_by_name.items():
        atoms = atoms.copy()
        atoms.calc = calc
        row = {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().tolist()}
        if stress:
            row["stress"] = atoms.get_stress(voigt=False).tolist()
        out[name] = row
    return out


GRAPH_FIELDS = (  # GraphAttentionData fields kept as intermediates (see record_intermediates)
    "neighbor_index",
    "src_index",
    "dst_index",
    "src_neighbor_attn_mask",
    "dst_neighbor_attn_mask",
    "edge_direction",
    "node_direction_expansion",
)


def record_intermediates(path: Path, atoms_by_name: dict[str, Atoms], dtype: torch.dtype) -> dict:
    """fairchem's graph and per-layer token states on each structure, for stage-by-stage debugging of
    a converter: the padded layout ``[N, K]`` (slot 0 = the self loop), its index maps and envelope
    biases, the bond-order features, the tokens after the input block and after every layer, and
    the final node representations the heads read."""
    calc = calculator(path, dtype, stress=False)
    backbone_of = lambda: calc.predictor.model.module.backbone  # noqa: E731  (built lazily on first call)
    out: dict = {}
    for name, atoms in atoms_by_name.items():
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()  # builds the model
        backbone = backbone_of()
        record: dict = {"layer_tokens": []}
        preprocess = backbone.data_preprocess

        def capture_graph(data, _record=record, _pre=preprocess):
            graph = _pre(data)
            for field in GRAPH_FIELDS:
                _record[field] = getattr(graph, field).detach().clone()
            return graph

        hooks = [
            backbone.input_block.register_forward_hook(
                lambda m, i, o, _r=record: _r.__setitem__("input_tokens", o.detach().clone())
            )
        ]
        for block in backbone.transformer_blocks:
            hooks.append(
                block.register_forward_hook(lambda m, i, o, _r=record: _r["layer_tokens"].append(o.detach().clone()))
            )
        backbone.data_preprocess = capture_graph
        try:
            calc.reset()
            atoms.get_potential_energy()
        finally:
            backbone.data_preprocess = preprocess
            for hook in hooks:
                hook.remove()
        out[name] = record
    return out


def structure_record(atoms: Atoms) -> dict:
    return {
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": np.asarray(atoms.cell).tolist(),
        "pbc": atoms.pbc.tolist(),
        "charge": int(atoms.info["charge"]),
        "spin": int(atoms.info["spin"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/fairchem")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--cutoff", type=float, default=6.0, help="Å (published: 6)")
    p.add_argument("--knn-k", type=int, default=8, help="soft kNN k (published: 30; small here so that ranks matter)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="fairchem-core 2.24's AllScAIP cannot run in float64 (see FLOAT64_NOTE); kept for later versions",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    # fairchem-core 2.24's AllScAIP builds its periodic image offsets and padded neighbour
    # tensors in torch's default dtype: with base_precision_dtype=float64 alone, a periodic
    # system fails (torch.mm of float32 image ids with a float64 cell). The default dtype makes
    # those tensors float64 as well; nothing else in fairchem's computation changes.
    torch.set_default_dtype(dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    atoms_by_name = structures(args.seed)
    report = {
        "command": " ".join(["python", "bench/fairchem_fixture.py", *sys.argv[1:]]),
        "versions": {
            "fairchem-core": version("fairchem-core"),
            "torch": torch.__version__,
            "ase": version("ase"),
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "dtype": args.dtype,
        "dtype_note": FLOAT64_NOTE,
        "units": {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3, 3x3, ASE convention: (1/V) dE/dstrain"},
        "calculator": "FAIRChemCalculator(MLIPPredictUnit(path, InferenceSettings(base_precision_dtype=dtype, "
        "tf32=False, compile=False)), task_name='omol'); conserving: overrides backbone.regress_stress=True "
        "and predict_untrained_stress={'omol'} to read the stress",
        "structures": {name: structure_record(atoms) for name, atoms in atoms_by_name.items()},
        "models": {},
    }
    for kind, direct in (("conserving", False), ("direct", True)):
        path = args.out / f"allscaip_md_{kind}.pt"
        write_checkpoint(args, direct, path)
        report["models"][kind] = {
            "file": path.name,
            "forces": "direct head" if direct else "-dE/dx",
            "results": evaluate(path, atoms_by_name, dtype, stress=not direct),
        }
    intermediates = record_intermediates(args.out / "allscaip_md_conserving.pt", atoms_by_name, dtype)
    torch.save(intermediates, args.out / "intermediates_conserving.pt")
    (args.out / "reference.json").write_text(json.dumps(report, indent=1) + "\n")
    for kind, model in report["models"].items():
        for name, row in model["results"].items():
            fmax = np.abs(np.asarray(row["forces"])).max()
            print(f"{kind:10s} {name:24s} E = {row['energy']:.8f} eV  max|F| = {fmax:.5f} eV/Å")


if __name__ == "__main__":
    main()
