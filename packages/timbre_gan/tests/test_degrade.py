"""The degradation chain: seeded, deterministic, and each stage does what it says."""

from __future__ import annotations

import numpy as np
import torch

from trainhub_timbre_gan.config import DegradeConfig
from trainhub_timbre_gan.degrade import STAGES, apply_chain, degrade, sample_chain, segment_rng
from trainhub_timbre_gan.synth import INSTRUMENTS, render_note, synth_piece

SR = 16000


def music(seconds: float = 0.5) -> torch.Tensor:
    return torch.from_numpy(synth_piece(3, 0, seconds, SR))


def test_same_seed_same_output_other_segment_other_chain():
    x, cfg = music(), DegradeConfig()
    a, chain_a = degrade(x, SR, cfg, segment_rng(0, "song.wav", 2))
    b, chain_b = degrade(x, SR, cfg, segment_rng(0, "song.wav", 2))
    assert chain_a == chain_b and torch.equal(a, b)
    chains = [sample_chain(cfg, SR, segment_rng(0, "song.wav", i)) for i in range(8)]
    assert len({repr(c) for c in chains}) == 8
    assert sample_chain(cfg, SR, segment_rng(1, "song.wav", 2)) != chain_a  # the dataset seed matters


def test_every_stage_changes_the_signal_keeps_length_and_is_finite():
    x = music()
    for stage in STAGES:
        probs = {f"{s}_prob": float(s == stage) for s in STAGES}
        chain = sample_chain(DegradeConfig(**probs), SR, np.random.default_rng(0))
        assert [c["op"] for c in chain] == [stage]
        y = apply_chain(x, SR, chain)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert float((y - x).abs().max()) > 1e-3, stage


def test_at_least_one_stage_when_all_probabilities_are_zero():
    cfg = DegradeConfig(**{f"{s}_prob": 0.0 for s in STAGES})
    assert all(len(sample_chain(cfg, SR, np.random.default_rng(i))) == 1 for i in range(5))


def test_band_limit_removes_the_high_band():
    x = torch.randn(SR) * 0.1
    y = apply_chain(x, SR, [{"op": "bandlimit", "cutoff_hz": 3000.0}])
    spec_x, spec_y = torch.fft.rfft(x).abs(), torch.fft.rfft(y).abs()  # 1 Hz bins
    assert spec_y[3300:].pow(2).sum() < 1e-3 * spec_x[3300:].pow(2).sum()
    assert torch.allclose(spec_y[200:2500].pow(2).sum(), spec_x[200:2500].pow(2).sum(), rtol=0.05)


def test_eq_boost_is_not_clamped_by_the_biquad():
    x = 0.9 * torch.sin(2 * torch.pi * 1000 * torch.arange(SR) / SR)
    chain = [{"op": "eq", "bands": [{"freq": 1000.0, "gain_db": 12.0, "q": 1.0}], "low_shelf_db": 0.0, "high_shelf_db": 0.0}]
    y = apply_chain(x, SR, chain)
    assert float(y[SR // 2 :].abs().max()) > 3.0  # +12 dB on a 0.9 sine: ~3.6, torchaudio alone would clamp at 1


def test_noise_hits_the_requested_snr():
    x = music()
    y = apply_chain(x, SR, [{"op": "noise", "snr_db": 20.0, "pink": True, "seed": 5}])
    snr = 10 * torch.log10(x.pow(2).sum() / (y - x).pow(2).sum())
    assert abs(float(snr) - 20.0) < 0.01


def test_instruments_render_and_pieces_are_deterministic():
    rng = np.random.default_rng(0)
    for kind in INSTRUMENTS:
        note = render_note(kind, 220.0, 0.3, SR, rng)
        assert np.isfinite(note).all() and 0.05 < np.abs(note).max() < 4.0, kind
    a, b = synth_piece(4, 0, 1.0, SR), synth_piece(4, 0, 1.0, SR)
    assert np.array_equal(a, b) and 0.5 <= np.abs(a).max() <= 0.9
    assert not np.array_equal(a, synth_piece(5, 0, 1.0, SR))
