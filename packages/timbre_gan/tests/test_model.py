from __future__ import annotations

import pytest
import torch

from trainhub_timbre_gan.model import Generator, MultiResolutionDiscriminator, restore_long


@pytest.mark.parametrize("strides", [(4, 4), (3, 2)])
@torch.no_grad()
def test_generator_starts_as_the_identity_for_any_length(strides):
    torch.manual_seed(0)
    g = Generator(channels=4, strides=strides, bottleneck_dilations=(1, 3))
    for t in (8000, 4001, 37):
        x = torch.randn(2, 1, t) * 0.3
        assert torch.equal(g(x), x)
    assert float(torch.sigmoid(g.gate.bias)) == 0.5


def test_the_first_step_moves_the_correction_head_then_everything():
    torch.manual_seed(0)
    g = Generator(channels=4, strides=(4,), bottleneck_dilations=(1,))
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    x, target = torch.randn(2, 1, 800) * 0.3, torch.randn(2, 1, 800) * 0.3
    grads = []
    for _ in range(2):
        opt.zero_grad()
        (g(x) - target).abs().mean().backward()
        grads.append(float(g.inp.weight.grad.abs().sum()))
        opt.step()
    assert grads[0] == 0.0 and grads[1] > 0.0  # the body learns once the zero-initialised head has moved
    assert float(g.correction.weight.detach().abs().sum()) > 0


@torch.no_grad()
def test_a_closed_gate_passes_the_input_through():
    torch.manual_seed(0)
    g = Generator(channels=4, strides=(4,), bottleneck_dilations=(1,), gate_bias=-40.0)
    torch.nn.init.normal_(g.correction.weight)
    x = torch.randn(1, 1, 800)
    assert torch.allclose(g(x), x, atol=1e-9)


def test_discriminator_outputs_and_features():
    d = MultiResolutionDiscriminator([(512, 128, 512), (256, 64, 256)], channels=4, strides=((2, 2), (2, 2)))
    outs = d(torch.randn(3, 1, 8000))
    assert len(outs) == 2
    for scores, feats in outs:
        assert scores.shape[0] == 3 and len(feats) == 4  # two (3, 9) convs, one (3, 3), the score map


def test_chunked_restore_equals_one_pass():
    torch.manual_seed(0)
    g = Generator(channels=4, strides=(4,), bottleneck_dilations=(1, 3))
    torch.nn.init.normal_(g.correction.weight, std=0.1)
    x = torch.randn(2, 5000) * 0.3
    whole = g(x.unsqueeze(1)).squeeze(1)
    chunked = restore_long(g, x, chunk=1024, context=1000)
    assert torch.allclose(whole, chunked, atol=1e-6)


@torch.no_grad()
def test_chunked_restore_equals_one_pass_when_chunk_and_context_are_off_the_stride():
    """22.05 kHz and a total stride of 64, as `trainhub sample` calls it (context sr // 2 = 11025, not a multiple of
    64): every chunk must run on the same stride phase as the one pass, so no jump at the chunk boundaries."""
    torch.manual_seed(0)
    sr = 22050
    g = Generator(channels=4, strides=(4, 4, 4), bottleneck_dilations=(1, 3))
    torch.nn.init.normal_(g.correction.weight, std=0.1)
    torch.nn.init.normal_(g.gate.weight, std=0.1)
    x = torch.randn(1, 2 * sr) * 0.3
    whole = g(x.unsqueeze(1)).squeeze(1)
    assert float((whole - x).abs().mean()) > 1e-2  # a real correction, not the identity
    chunked = restore_long(g, x, chunk=int(0.3 * sr), context=sr // 2)
    assert torch.allclose(whole, chunked, atol=1e-6), float((whole - chunked).abs().max())
