"""Declared configuration schemas (one place): model hyper-parameters and presets.

Every configuration object is a dataclass read with the machinery of
:mod:`allscaip.config_schema` (:func:`from_dict` rejects unknown keys with a message that lists
the valid ones; presets resolve through :func:`~allscaip.config_schema.preset_values`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from allscaip.config_schema import ConfigError, from_dict, preset_values

ENCODING_CHOICES = ("none", "sinc_pairs")
"""Values of ``ModelConfig.node_encoding`` (``sinc_pairs``: :mod:`allscaip.model.node_encoding`)."""

__all__ = ["ConfigError", "ModelConfig", "PRESETS", "from_dict", "model_config"]


@dataclass
class ModelConfig:
    """AllScAIP hyper-parameters.

    Sizes: ``hidden`` channels, ``layers`` blocks, ``heads`` attention heads.
    Graph: neighbours within ``cutoff`` Å; with ``max_neighbors`` set, a smooth soft-rank
    envelope keeps roughly the nearest ``max_neighbors`` (published default 30).
    """

    elements: list[int] = field(default_factory=lambda: [1, 8])  # atomic numbers, model order
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    cutoff: float = 6.0
    max_neighbors: int | None = None  # soft-rank kNN envelope when set
    rank_temperature: float = 0.2  # Å, width of the soft rank sigmoid
    num_rbf: int = 32
    bond_order_lmax: int = 9  # Steinhardt q_l, l = 0..lmax, in the node embedding (-1: off)
    legendre: bool = True  # Legendre angular encoding in neighbour attention
    legendre_lmax: int = 4
    node_attention: bool = True  # all-to-all node attention (False: local-only ablation)
    qk_norm: bool = True  # RMS-normalised queries and keys in every attention (training stability)
    distance_bias: bool = False  # sinc "Euclidean rotary" bias in node attention
    distance_bias_freqs: int = 32
    # distance-aware node attention (allscaip.model.node_encoding): "none" or "sinc_pairs", a smooth
    # pair bias over the periodic images within encoding_range Å, encoding_freqs Bessel functions
    node_encoding: str = "none"
    encoding_range: float = 12.0
    encoding_freqs: int = 16
    charge_spin: bool = True  # system charge / spin embeddings
    max_charge: int = 10
    max_spin: int = 10
    ffn_ratio: int = 2
    # ZBL wall below margin x the shortest distance of each element pair in the training data
    # (allscaip.model.core_repulsion; zero on every training configuration)
    core_repulsion: bool = True
    core_margin: float = 0.9

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.cutoff <= 0:
            raise ConfigError(f"cutoff must be positive, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ConfigError(f"max_neighbors must be >= 1 or null, got {self.max_neighbors}")
        if not 0.0 < self.core_margin < 1.0:
            raise ConfigError(
                f"core_margin must lie in (0, 1) (the wall must end below the shortest "
                f"training distance), got {self.core_margin}"
            )
        self._check_node_encoding()
        if not self.elements:
            raise ConfigError("elements must list at least one atomic number")
        self.elements = [int(z) for z in self.elements]
        if len(set(self.elements)) != len(self.elements):
            raise ConfigError(f"elements has duplicates: {self.elements}")

    def _check_node_encoding(self) -> None:
        if self.node_encoding not in ENCODING_CHOICES:
            raise ConfigError(f"node_encoding must be one of {list(ENCODING_CHOICES)}, got {self.node_encoding!r}")
        if self.encoding_range <= 0:
            raise ConfigError(f"encoding_range must be positive (Å), got {self.encoding_range}")
        if self.encoding_freqs < 1:
            raise ConfigError(f"encoding_freqs must be >= 1, got {self.encoding_freqs}")
        if self.node_encoding == "none":
            return
        if self.distance_bias:
            raise ConfigError(
                f"node_encoding={self.node_encoding!r} and the legacy distance_bias: true both bias node "
                "attention; choose one (set distance_bias: false, or node_encoding: none)"
            )
        if not self.node_attention:
            raise ConfigError(
                f"node_encoding={self.node_encoding!r} biases node attention, which node_attention: false "
                "turns off; set node_attention: true or node_encoding: none"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# Named sizes. "sm" and "md" are fairchem's published AllScAIP configurations, named after what
# they switch on: sm_NeAnNoSi has the angular encoding of neighbour attention (our Legendre
# encoding) and the sinc encoding of node attention (our smooth, finite-range sinc_pairs) on;
# md_NeNo, the configuration of the OMol25 checkpoints, has both off. "lr" is ours: the small
# size with both encodings on, for liquids and electrolytes, where physics beyond the local
# receptive field needs distance-aware node attention (docs/longrange.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, layers=2, heads=4),
    "small": dict(hidden=128, layers=3, heads=4),
    "lr": dict(hidden=128, layers=3, heads=4, legendre=True, node_encoding="sinc_pairs", encoding_range=12.0),
    "sm": dict(hidden=512, layers=6, heads=8, max_neighbors=30, legendre=True, node_encoding="sinc_pairs"),
    "md": dict(hidden=640, layers=10, heads=10, max_neighbors=30, legendre=False, node_encoding="none"),
}
PRESETS["sm_NeAnNoSi"] = PRESETS["sm"]  # fairchem's names for the same configurations
PRESETS["md_NeNo"] = PRESETS["md"]


def model_config(preset: str | None = None, **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a named preset (``tiny``, ``small``, ``lr``, ``sm`` or
    ``sm_NeAnNoSi``, ``md`` or ``md_NeNo``) plus overrides."""
    return from_dict(ModelConfig, {**preset_values(PRESETS, preset, "model.preset"), **overrides}, "model")
