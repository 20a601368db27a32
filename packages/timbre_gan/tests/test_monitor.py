from __future__ import annotations

from trainhub_timbre_gan.monitor import GANWatch


def kinds(out):
    return [k for k, _, _ in out]


def test_loss_spike_warns_once_per_excursion():
    w = GANWatch(spike_factor=10.0, min_history=3)
    assert all(w.check(s, {"l1": 0.1}) == [] for s in range(5))
    assert kinds(w.check(5, {"l1": 2.0})) == ["loss_spike"]
    assert w.check(6, {"l1": 3.0}) == []  # still the same excursion
    assert w.check(7, {"l1": 0.1}) == []
    out = w.check(8, {"l1": 5.0})
    assert kinds(out) == ["loss_spike"] and out[0][2]["term"] == "l1"
    assert w.check(9, {"l1": 0.5}) == []  # 5x: not a spike


def test_discriminator_collapse_and_explosion():
    w = GANWatch(collapse_eps=0.01, collapse_patience=3, explode_limit=50.0)
    stuck = {"D_real": 0.001, "D_fake": -0.002}
    assert w.check(1, stuck) == [] and w.check(2, stuck) == []
    assert kinds(w.check(3, stuck)) == ["discriminator_collapse"]
    assert w.check(4, stuck) == []
    assert w.check(5, {"D_real": 0.9, "D_fake": 0.1}) == []
    assert kinds(w.check(6, {"D_real": 80.0, "D_fake": -3.0})) == ["discriminator_explode"]
    assert w.check(7, {"D_real": 90.0, "D_fake": -3.0}) == []
    assert kinds(w.check(8, {"D_real": float("nan"), "D_fake": 0.0})) == []  # still exploded (non-finite counts)
