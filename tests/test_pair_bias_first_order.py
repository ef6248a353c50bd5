"""The engines' first-order pair bias (allscaip.model.pair_bias_first_order) against the model's
autograd bias ``sinc_pair_basis(vec) @ weights``: equal values and equal gradients with respect to
the pair vectors, in float64, over the whole range (tiny distances where j0' takes its series, the
switch near R, chunk boundaries)."""

import torch

from allscaip.model.node_encoding import sinc_pair_basis
from allscaip.model.pair_bias_first_order import first_order_pair_bias

RANGE_A = 6.0
FREQS = 8
HEADS = 4


def _pairs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(400, 3, generator=g, dtype=torch.float64), dim=1)
    lengths = torch.cat(
        [
            torch.logspace(-4, -1, 40, dtype=torch.float64),  # j0' by its series for the low frequencies
            torch.rand(320, generator=g, dtype=torch.float64) * RANGE_A,
            RANGE_A - torch.logspace(-6, -1, 40, dtype=torch.float64),  # the switch's end
        ]
    )
    return directions * lengths.unsqueeze(1)


def test_value_and_gradient_equal_the_autograd_bias():
    vec = _pairs()
    weights = torch.randn(FREQS, HEADS, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seed = torch.randn(vec.shape[0], HEADS, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    ref_vec = vec.clone().requires_grad_(True)
    ref = sinc_pair_basis(ref_vec, RANGE_A, FREQS) @ weights
    (ref_grad,) = torch.autograd.grad((ref * seed).sum(), ref_vec)

    for chunk in (7, 1 << 20):  # several chunks with a short last one, and one
        lean_vec = vec.clone().requires_grad_(True)
        lean = first_order_pair_bias(lean_vec, weights, RANGE_A, FREQS, chunk=chunk)
        (lean_grad,) = torch.autograd.grad((lean * seed).sum(), lean_vec)
        assert torch.allclose(lean, ref, rtol=0, atol=1e-13), (lean - ref).abs().max()
        scale = ref_grad.abs().max()
        assert (lean_grad - ref_grad).abs().max() <= 1e-11 * scale, (lean_grad - ref_grad).abs().max() / scale


def test_scripted_equals_eager_and_handles_no_pairs():
    scripted = torch.jit.script(first_order_pair_bias)
    vec = _pairs(3).requires_grad_(True)
    weights = torch.randn(FREQS, HEADS, dtype=torch.float64)
    assert torch.equal(scripted(vec, weights, RANGE_A, FREQS), first_order_pair_bias(vec, weights, RANGE_A, FREQS))
    none = scripted(torch.zeros(0, 3, dtype=torch.float64, requires_grad=True), weights, RANGE_A, FREQS)
    assert none.shape == (0, HEADS)
