"""The settings of a fairchem AllScAIP backbone that the converted network depends on, read from a
checkpoint's ``model_config['backbone']`` with fairchem-core 2.24's defaults for what it omits, and
a clear error for architectures the converter does not compute."""

from __future__ import annotations

from typing import Dict, List, NamedTuple

from allscaip.checkpoint_fairchem import FairchemCheckpointError

SUPPORTED_SWITCHES = {  # backbone setting -> the value this module computes (md_NeNo and sm_NeAnNoSi)
    "knn_soft": True,
    "knn_use_low_mem": True,
    "activation": "gelu",
    "normalization": "rmsnorm",
    "distance_function": "gaussian",
    "use_envelope": True,
    "energy_reduce": "sum",
}
DEFAULTS = {  # fairchem-core 2.24's defaults of the settings a checkpoint may omit
    "use_freq_mask": True,
    "use_sincx_mask": True,
    "knn_soft": True,
    "knn_use_low_mem": True,
    "activation": "gelu",
    "normalization": "rmsnorm",
    "distance_function": "gaussian",
    "use_envelope": True,
    "energy_reduce": "sum",
    "use_node_path": True,
    "knn_sigmoid_scale": 0.2,
    "knn_lse_scale": 0.1,
    "node_direction_expansion_size": 10,
    "edge_direction_expansion_size": 6,
    "edge_distance_expansion_size": 512,
    "ffn_hidden_layer_multiplier": 2,
    "output_hidden_layer_multiplier": 2,
    "max_num_elements": 110,
    "freequency_list": [20, 10, 4, 10, 20],  # (sic) fairchem's spelling
    "attn_num_freq": 32,
}


class FairchemSettings(NamedTuple):
    """The backbone settings the network depends on."""

    hidden: int
    layers: int
    heads: int
    cutoff: float
    knn_k: int
    rank_scale: float
    lse_scale: float
    node_lmax: int
    edge_lmax: int
    num_gaussians: int
    ffn_multiplier: int
    output_multiplier: int
    max_elements: int
    use_node_path: bool
    direct_forces: bool
    frequency_list: List[int]  # empty without the frequency mask (md)
    sinc_frequencies: int  # 0 without the sinc mask (md)


def settings_from_backbone(backbone: Dict) -> FairchemSettings:
    """Settings of a checkpoint's backbone config; a clear error for what this module does not compute."""
    cfg = {**DEFAULTS, **backbone}
    for key, value in SUPPORTED_SWITCHES.items():
        if cfg[key] != value:
            raise FairchemCheckpointError(
                f"fairchem backbone setting {key}={cfg[key]!r} is not supported: this converter computes the "
                f"md_NeNo and sm_NeAnNoSi architectures ({key}={value!r})"
            )
    heads, hidden = int(cfg["atten_num_heads"]), int(cfg["hidden_size"])
    frequency_list = [int(n) for n in cfg["freequency_list"]] if cfg["use_freq_mask"] else []
    if frequency_list and sum(frequency_list) != hidden // heads:
        raise FairchemCheckpointError(
            f"fairchem backbone freequency_list {frequency_list} must sum to the head size {hidden // heads}; "
            "the checkpoint is inconsistent"
        )
    return FairchemSettings(
        hidden=int(cfg["hidden_size"]),
        layers=int(cfg["num_layers"]),
        heads=int(cfg["atten_num_heads"]),
        cutoff=float(cfg["max_radius"]),
        knn_k=int(cfg["knn_k"]),
        rank_scale=float(cfg["knn_sigmoid_scale"]),
        lse_scale=float(cfg["knn_lse_scale"]),
        node_lmax=int(cfg["node_direction_expansion_size"]) - 1,
        edge_lmax=int(cfg["edge_direction_expansion_size"]) - 1,
        num_gaussians=int(cfg["edge_distance_expansion_size"]),
        ffn_multiplier=int(cfg["ffn_hidden_layer_multiplier"]),
        output_multiplier=int(cfg["output_hidden_layer_multiplier"]),
        max_elements=int(cfg["max_num_elements"]),
        use_node_path=bool(cfg["use_node_path"]),
        direct_forces=bool(cfg["direct_forces"]),
        frequency_list=frequency_list,
        sinc_frequencies=int(cfg["attn_num_freq"]) if cfg["use_sincx_mask"] and cfg["use_node_path"] else 0,
    )
