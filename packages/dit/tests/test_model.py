"""Sizes, parameter counts and weight compatibility with the official DiT code (facebookresearch/DiT)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from trainhub_dit import compat
from trainhub_dit.model import PATCHES, SIZES, DiT, DiT_models

# the paper's parameter counts (millions) for the /2 models at 256 px (32x32x4 latents); /4 and /8 are within 0.2%
PAPER_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


@pytest.mark.parametrize("name", sorted(DiT_models))
def test_every_size_has_the_right_shapes(name: str) -> None:
    """Built on the meta device (no memory, no compute): output (N, 2C, H, W), one token per patch."""
    size, patch = name[4:].split("/")
    with torch.device("meta"):
        m = DiT_models[name](input_size=32, in_channels=4, num_classes=1000)
        out = m(torch.zeros(2, 4, 32, 32), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    depth, hidden, heads = SIZES[size]
    assert out.shape == (2, 8, 32, 32)
    assert len(m.blocks) == depth and m.blocks[0].attn.num_heads == heads
    assert m.pos_embed.shape == (1, (32 // int(patch)) ** 2, hidden)


@pytest.mark.parametrize("size", sorted(PAPER_M))
def test_parameter_counts_match_the_paper(size: str) -> None:
    for patch in PATCHES:
        with torch.device("meta"):
            m = DiT_models[f"DiT-{size}/{patch}"](input_size=32, in_channels=4, num_classes=1000)
        # the reference counts pos_embed too (a frozen parameter there, a buffer here)
        n = sum(p.numel() for p in m.parameters()) + m.pos_embed.numel()
        assert abs(n / 1e6 - PAPER_M[size]) / PAPER_M[size] < 0.01, (size, patch, n)


def official_shapes(depth: int, hidden: int, patch: int, in_ch: int, classes: int, input_size: int,
                    learn_sigma: bool = True, dropout: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of the official DiT state dict with its shape, in the official order (written from its models.py)."""
    out_ch = 2 * in_ch if learn_sigma else in_ch
    keys: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, (input_size // patch) ** 2, hidden),
        "x_embedder.proj.weight": (hidden, in_ch, patch, patch), "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + int(dropout), hidden),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({
            b + "attn.qkv.weight": (3 * hidden, hidden), b + "attn.qkv.bias": (3 * hidden,),
            b + "attn.proj.weight": (hidden, hidden), b + "attn.proj.bias": (hidden,),
            b + "mlp.fc1.weight": (4 * hidden, hidden), b + "mlp.fc1.bias": (4 * hidden,),
            b + "mlp.fc2.weight": (hidden, 4 * hidden), b + "mlp.fc2.bias": (hidden,),
            b + "adaLN_modulation.1.weight": (6 * hidden, hidden), b + "adaLN_modulation.1.bias": (6 * hidden,),
        })
    keys.update({
        "final_layer.linear.weight": (patch * patch * out_ch, hidden), "final_layer.linear.bias": (patch * patch * out_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden), "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    })
    return keys


@pytest.mark.parametrize("name", ["DiT-XL/2", "DiT-S/8"])
def test_state_dict_keys_and_shapes_are_the_official_ones(name: str) -> None:
    size, patch = name[4:].split("/")
    depth, hidden, _ = SIZES[size]
    with torch.device("meta"):
        m = DiT_models[name](input_size=32, in_channels=4, num_classes=1000)
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert ours == official_shapes(depth, hidden, int(patch), 4, 1000, 32)
    assert list(ours) == list(official_shapes(depth, hidden, int(patch), 4, 1000, 32))  # same order too


def random_official(depth: int = 2, hidden: int = 48, patch: int = 2, in_ch: int = 4, classes: int = 10, size: int = 8) -> dict[str, torch.Tensor]:
    """A randomly initialised official-layout state dict (non-zero everywhere, so every path matters)."""
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.2 for k, s in official_shapes(depth, hidden, patch, in_ch, classes, size).items()}
    from trainhub_dit.model import sincos_pos_embed_2d

    sd["pos_embed"] = sincos_pos_embed_2d(hidden, size // patch)[None]
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, heads: int,
                      patch: int, depth: int) -> torch.Tensor:
    """The official DiT forward written out with plain tensor ops from the state dict (explicit softmax attention,
    tanh GELU, adaLN order shift/scale/gate), as an independent check of our module."""
    n, c, hgt, _ = x.shape
    hidden = sd["x_embedder.proj.bias"].shape[0]
    lin = lambda v, k: v @ sd[k + ".weight"].T + sd[k + ".bias"]  # noqa: E731
    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    tok = tok + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = lin(F.silu(lin(temb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    cond = temb + sd["y_embedder.embedding_table.weight"][y]
    ln = lambda v: F.layer_norm(v, (hidden,), eps=1e-6)  # noqa: E731
    for i in range(depth):
        b = f"blocks.{i}."
        mod = lin(F.silu(cond), b + "adaLN_modulation.1").chunk(6, 1)
        h = ln(tok) * (1 + mod[1][:, None]) + mod[0][:, None]
        qkv = lin(h, b + "attn.qkv").reshape(n, -1, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(hidden // heads)).softmax(-1) @ qkv[2]
        tok = tok + mod[2][:, None] * lin(att.transpose(1, 2).reshape(n, -1, hidden), b + "attn.proj")
        h = ln(tok) * (1 + mod[4][:, None]) + mod[3][:, None]
        tok = tok + mod[5][:, None] * lin(F.gelu(lin(h, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
    shift, scale = lin(F.silu(cond), "final_layer.adaLN_modulation.1").chunk(2, 1)
    out = lin(ln(tok) * (1 + scale[:, None]) + shift[:, None], "final_layer.linear")
    g, oc = hgt // patch, sd["final_layer.linear.bias"].shape[0] // patch**2
    return torch.einsum("nhwpqc->nchpwq", out.reshape(n, g, g, patch, patch, oc)).reshape(n, oc, g * patch, g * patch)


def micro_model() -> DiT:
    return DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=3, num_classes=10)


def test_official_weights_give_the_official_outputs(tmp_path) -> None:
    sd = random_official()
    torch.save(sd, tmp_path / "released.pt")  # the released-weights format: a plain state dict
    m = micro_model().eval()
    assert compat.load_weights(m, compat.read(tmp_path / "released.pt").model) == []
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 17, 999]), torch.tensor([1, 9, 10])  # 10 = the null class
    with torch.no_grad():
        assert torch.allclose(m(x, t, y), reference_forward(sd, x, t, y, heads=3, patch=2, depth=2), atol=1e-5)
        # round trip: our state dict is loadable by the same official layout
        again = micro_model().eval()
        again.load_state_dict(m.state_dict())
        assert torch.equal(again(x, t, y), m(x, t, y))


def test_training_checkpoint_with_namespace_loads_weights_only(tmp_path) -> None:
    """train.py's {"model", "ema", "opt", "args"}: the Namespace is allow-listed, Adam moments move over by name."""
    sd, ema = random_official(), {k: v + 1 for k, v in random_official().items()}
    ref = micro_model()
    ref.load_state_dict(sd)
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]  # the official optimizer order: pos_embed first
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params[1:]:
        p.grad = torch.randn_like(p)
    opt.step()
    args = argparse.Namespace(model="DiT-S/2", image_size=64, num_classes=10, global_batch_size=256)
    torch.save({"model": sd, "ema": ema, "opt": opt.state_dict(), "args": args}, tmp_path / "0000001.pt")

    ck = compat.read(tmp_path / "0000001.pt")
    assert ck.args.model == "DiT-S/2" and torch.equal(ck.ema["final_layer.linear.bias"], ema["final_layer.linear.bias"])
    m = micro_model()
    compat.load_weights(m, ck.model)
    ours = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    assert compat.load_optimizer(ours, m, ck.opt, list(ck.model)) == 1
    name_of = {id(p): n for n, p in m.named_parameters()}
    for p in m.parameters():
        i = list(sd).index(name_of[id(p)])
        assert torch.equal(ours.state[p]["exp_avg"], opt.state[params[i]]["exp_avg"])


def test_other_pickled_objects_are_refused(tmp_path) -> None:
    from fractions import Fraction  # any class that is not allow-listed

    from trainhub import UserError

    torch.save({"model": {"w": torch.zeros(1)}, "args": Fraction(1, 3)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="weights_only=True"):
        compat.read(tmp_path / "bad.pt")


def test_class_table_may_differ_for_fine_tuning_but_nothing_else() -> None:
    from trainhub import UserError

    sd = random_official(classes=1000)
    m = micro_model()
    notes = compat.load_weights(m, sd)
    assert len(notes) == 1 and "class count differs" in notes[0]
    assert torch.equal(m.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    sd = random_official(patch=4)
    with pytest.raises(UserError, match="has shape .* in the checkpoint"):
        compat.load_weights(micro_model(), sd)


def test_model_without_label_dropout_keeps_the_class_rows_of_official_weights() -> None:
    """Official weights always carry the null class row (10 classes: 11 rows); a model of the same 10 classes without
    label dropout (10 rows) takes the 10 trained class rows in its weights, its EMA and their Adam moments, and drops
    the null row. A table that holds other classes stays ours."""
    table = compat.CLASS_TABLE
    official = random_official(classes=10)
    assert official[table].shape == (11, 48)
    m = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=3, num_classes=10,
            class_dropout_prob=0.0)
    notes = compat.load_weights(m, official, "DiT.pt")
    assert torch.equal(m.y_embedder.embedding_table.weight, official[table][:10])
    assert notes == ["DiT.pt: y_embedder.embedding_table.weight: checkpoint (11, 48) vs model (10, 48): the 10 class "
                     "rows loaded, the null class row dropped (model.class_dropout_prob=0 trains no guidance)"]
    ema = {k: v + 1 for k, v in official.items()}
    state, notes = compat.ema_state(m, ema, "DiT.pt (ema)")
    assert torch.equal(state[table], ema[table][:10]) and len(notes) == 1 and "null class row dropped" in notes[0]

    params = [torch.nn.Parameter(v.clone()) for v in official.values()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params[1:]:
        p.grad = torch.randn_like(p)
    opt.step()
    ours = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    assert compat.load_optimizer(ours, m, opt.state_dict(), list(official)) == 1
    moments = ours.state[m.y_embedder.embedding_table.weight]
    expect = opt.state_dict()["state"][list(official).index(table)]
    assert torch.equal(moments["exp_avg"], expect["exp_avg"][:10]) and torch.equal(moments["exp_avg_sq"], expect["exp_avg_sq"][:10])

    # 9 classes + null (10 rows) into 10 classes + null, 11 classes + null into 10 classes without: other classes
    for classes, dropout in ((9, 0.1), (11, 0.0)):
        m = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=3, num_classes=10,
                class_dropout_prob=dropout)
        fresh = m.y_embedder.embedding_table.weight.detach().clone()
        notes = compat.load_weights(m, random_official(classes=classes))
        assert len(notes) == 1 and "class count differs" in notes[0], classes
        assert torch.equal(m.y_embedder.embedding_table.weight, fresh)


def test_ema_is_checked_as_strictly_as_the_weights() -> None:
    from trainhub import UserError

    m = micro_model()
    compat.load_weights(m, random_official())
    ema = random_official()
    state, notes = compat.ema_state(m, ema, "ck.pt (ema)")
    assert notes == [] and list(state) == list(m.state_dict()) and all(torch.equal(state[k], v) for k, v in ema.items())
    del ema["blocks.1.attn.qkv.bias"]
    with pytest.raises(UserError, match=r"ck.pt \(ema\): keys do not match.*blocks.1.attn.qkv.bias"):
        compat.ema_state(m, ema, "ck.pt (ema)")
    with pytest.raises(UserError, match=r"ck.pt \(ema\): pos_embed has shape \(1, 4, 48\) in the checkpoint"):
        compat.ema_state(m, random_official(patch=4), "ck.pt (ema)")
    state, notes = compat.ema_state(m, random_official(classes=1000), "ck.pt (ema)")
    assert len(notes) == 1 and "class count differs" in notes[0]
    assert torch.equal(state[compat.CLASS_TABLE], m.y_embedder.embedding_table.weight)  # the weights' (fresh) table


def test_adam_moments_in_another_order_are_refused() -> None:
    from trainhub import UserError

    sd = random_official()
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params[1:]:
        p.grad = torch.randn_like(p)
    opt.step()
    m = micro_model()
    ours = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    shifted = list(sd)[1:] + ["pos_embed"]  # one place off: moments land on parameters of other shapes
    with pytest.raises(UserError, match="does not follow its 'model' order"):
        compat.load_optimizer(ours, m, opt.state_dict(), shifted)


def test_forward_with_cfg_guides_the_noise_channels() -> None:
    from trainhub_dit.diffusion import guided

    m = micro_model().eval()
    m.load_state_dict(random_official())
    x = torch.randn(2, 4, 8, 8)
    xx, t, y = torch.cat([x, x]), torch.tensor([5, 5, 5, 5]), torch.tensor([1, 2, 10, 10])
    with torch.no_grad():
        out, plain = m.forward_with_cfg(xx, t, y, 3.0), m(xx, t, y)
        official = m.forward_with_cfg(xx, t, y, 3.0, guided_channels=3)  # the official sampler's 3-channel quirk
        ours = guided(m, y[:2], 3.0, null_class=10, channels=4)(x, t[:2])
        quirk = guided(m, y[:2], 3.0, null_class=10, channels=3)(x, t[:2])
    cond, uncond = plain[:2, :4], plain[2:, :4]
    assert torch.allclose(out[:2, :4], uncond + 3.0 * (cond - uncond), atol=1e-5)
    assert torch.equal(out[:, 4:], plain[:, 4:])
    assert torch.allclose(official[:2, :3], out[:2, :3]) and torch.equal(official[:2, 3:], plain[:2, 3:])
    assert not torch.allclose(official[:2, 3], out[:2, 3])
    # the sampler's guided model function is the kept (conditional) half of forward_with_cfg
    assert torch.allclose(ours, out[:2], atol=1e-5) and torch.allclose(quirk, official[:2], atol=1e-5)
