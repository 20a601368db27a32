from __future__ import annotations

import pytest
import torch

from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.diffusion import SCHEDULES, add_noise_to_timestep, alpha_bar, masked_mse, sample
from trainhub_tokenimage.model import TokenDiT
from trainhub_tokenimage.tokenizer import ByteTokenizer


def make_batch(seed=0, cond=False):
    g = torch.Generator().manual_seed(seed)
    codec = TokenCodec(262, 32, 3, (2, 2), 4)
    lengths = [100, 37, 256]
    items = [codec.encode(torch.randint(0, 262, (n,), generator=g)) for n in lengths]
    clean, mask = torch.stack([x[0] for x in items]), torch.stack([x[1] for x in items])
    out = {"clean": clean, "mask": mask}
    if cond:
        citems = [codec.encode(torch.randint(0, 262, (n,), generator=g)) for n in (20, 200, 3)]
        out["condition"], out["condition_mask"] = torch.stack([x[0] for x in citems]), torch.stack([x[1] for x in citems])
    return out


def net(seed=0, conditional=True):
    torch.manual_seed(seed)
    m = TokenDiT(img_size=32, channels=3, patch_size=4, hidden=32, depth=2, heads=2, conditional=conditional)
    for p in m.parameters():  # leave adaLN-Zero's identity start so every path matters in the test
        torch.nn.init.normal_(p, std=0.05)
    return m


def loss_and_grads(model, batch, noisy):
    model.zero_grad()
    t = torch.tensor([0.2, 0.5, 0.9])
    pred = model(noisy, t, condition=batch.get("condition"), mask=batch["mask"], condition_mask=batch.get("condition_mask"))
    loss = masked_mse(pred, batch["clean"], batch["mask"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # no unused parameters (DDP)
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cond", [False, True])
def test_padding_changes_neither_loss_nor_gradients(cond):
    batch = make_batch(cond=cond)
    model = net(conditional=cond)
    noisy = add_noise_to_timestep(batch["clean"], 0.5, generator=torch.Generator().manual_seed(1))
    pad = 1 - batch["mask"]
    loss_a, grads_a = loss_and_grads(model, batch, noisy)
    noisy_b = noisy + pad * 100 * torch.randn_like(noisy)
    other = dict(batch, clean=batch["clean"] + pad * torch.randn_like(batch["clean"]))
    if cond:
        cpad = 1 - batch["condition_mask"]
        other["condition"] = batch["condition"] + cpad * 50 * torch.randn_like(batch["condition"])
    loss_b, grads_b = loss_and_grads(model, other, noisy_b)
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name
    # and the valid pixels do matter
    loss_c, _ = loss_and_grads(model, batch, noisy + batch["mask"] * 0.5)
    assert not torch.equal(loss_a, loss_c)


def test_padded_patches_are_excluded_from_attention():
    """Change the embeddings of fully padded patches inside the model: valid outputs stay the same."""
    batch = make_batch(cond=True)
    model = net().eval()
    noisy = add_noise_to_timestep(batch["clean"], 0.5, generator=torch.Generator().manual_seed(2))
    t = torch.full((3,), 0.5)

    def run():
        return model(noisy, t, condition=batch["condition"], mask=batch["mask"], condition_mask=batch["condition_mask"])

    ref = run()
    keep = model.patch_keep(batch["mask"])
    ckeep = model.patch_keep(batch["condition_mask"])
    assert (~keep).any() and (~ckeep).any()

    def hook(keep_):
        def f(module, args, out):
            flat = out.flatten(2)
            noise = 10 * torch.randn_like(flat) * (~keep_)[:, None, :]
            return (flat + noise).view_as(out)
        return f

    handles = [model.x_embed.register_forward_hook(hook(keep)), model.c_embed.register_forward_hook(hook(ckeep))]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    m = batch["mask"].expand_as(ref).bool()
    assert torch.allclose(out[m], ref[m], atol=1e-5)
    assert not torch.allclose(out[~m], ref[~m])  # the padded patches themselves did change


def test_shapes_all_padding_and_unconditional():
    import trainhub_tokenimage

    assert trainhub_tokenimage.TokenDiT is TokenDiT and trainhub_tokenimage.masked_mse is masked_mse
    model = net(conditional=False)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    out = model(x, torch.rand(2), mask=mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert model(x, torch.rand(2)).shape == x.shape
    with pytest.raises(ValueError, match="conditional"):
        model(x, torch.rand(2), condition=x)


def test_masked_mse_arithmetic():
    pred, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # 8 valid pixels x 3 channels, squared error 1 each
    target[..., 2:, :] = 100.0  # padding error is ignored
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.0)
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_noise_schedules(schedule):
    t = torch.linspace(0, 1, 101)
    a = alpha_bar(t, schedule)
    assert (a[1:] <= a[:-1]).all() and a[0] > 0.98 and a[-1] < 0.02
    # one image and one noise draw at four times, so the error grows with t alone (independent draws per row made
    # the comparison of neighbouring rows depend on the draw: it failed now and then)
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(1, 3, 8, 8, generator=g) * 2 - 1).expand(4, -1, -1, -1)
    noise = torch.randn(1, 3, 8, 8, generator=g).expand(4, -1, -1, -1)
    x = add_noise_to_timestep(clean, torch.tensor([0.0, 0.3, 0.6, 1.0]), schedule, noise=noise)
    err = (x - clean).flatten(1).pow(2).mean(1)
    assert (err[1:] > err[:-1]).all()


def test_sampler_with_an_oracle_recovers_the_tokens():
    codec = TokenCodec(262, 32, 3, (2, 2), 4)
    ids = torch.randint(0, 262, (2, codec.capacity))
    clean = torch.stack([codec.encode(r)[0] for r in ids])

    def oracle(x, t):  # a perfect denoiser
        return clean

    out = sample(oracle, tuple(clean.shape), steps=4, snap=codec.snap)
    assert codec.decode(out) == ids.tolist()


def test_skip_parameterization():
    """Freshly built (zero-initialised output layer): skip=True predicts c_skip(t) * noisy, the best linear guess;
    at t = 0 that is the input itself. skip=False predicts 0."""
    batch = make_batch()
    noisy = add_noise_to_timestep(batch["clean"], 0.3, generator=torch.Generator().manual_seed(3))
    kw = dict(img_size=32, channels=3, patch_size=4, hidden=32, depth=1, heads=2)
    skip, plain = TokenDiT(**kw), TokenDiT(skip=False, **kw)
    t = torch.tensor([0.0, 0.3, 0.9])
    c_skip, c_out = skip.skip_scales(t)
    assert c_skip[0].item() == pytest.approx(1.0, abs=1e-4) and c_out[0].item() == pytest.approx(0.0, abs=0.02)
    assert (c_skip[1:] < c_skip[:-1]).all() and (c_out[1:] > c_out[:-1]).all()
    out = skip(noisy, t, mask=batch["mask"])
    assert torch.allclose(out, c_skip * noisy * batch["mask"], atol=1e-6)
    assert torch.equal(plain(noisy, t, mask=batch["mask"]), torch.zeros_like(noisy))
    # the skip guess beats predicting 0 at low noise, which is what makes early one-shot accuracy high
    low = add_noise_to_timestep(batch["clean"], 0.1, generator=torch.Generator().manual_seed(4))
    tt = torch.full((3,), 0.1)
    assert masked_mse(skip(low, tt, mask=batch["mask"]), batch["clean"], batch["mask"]) < \
        0.2 * masked_mse(plain(low, tt, mask=batch["mask"]), batch["clean"], batch["mask"])


def test_generation_metrics_against_reference():
    from trainhub_tokenimage.metrics import evaluate_denoiser, generation_metrics

    codec = TokenCodec(262, 32, 3, (2, 2), 4)
    tok = ByteTokenizer()
    texts = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine"]
    items = [codec.encode(tok.encode(x)) for x in texts]
    batch = {"clean": torch.stack([x[0] for x in items]), "mask": torch.stack([x[1] for x in items])}
    ref: dict = {}
    model = TokenDiT(img_size=32, patch_size=4, hidden=32, depth=1, heads=2)
    m = evaluate_denoiser(model, [batch], codec, [0.1], "cosine", torch.device("cpu"), reference=ref)
    assert m["acc_chance"] == pytest.approx(13 / 70)  # the most frequent token is the space: 13 of 70
    assert int(ref["unigram"].sum()) == sum(len(x) for x in texts)
    same = generation_metrics([tok.encode(x) for x in texts], ref, 262)
    assert same == {"gen_unigram_tv": pytest.approx(0.0), "gen_bigram_hit": 1.0}
    mixed = generation_metrics([tok.encode("the dog saves time")], ref, 262)
    assert 0 < mixed["gen_unigram_tv"] < 0.5 and 0.5 < mixed["gen_bigram_hit"] < 1
    junk = generation_metrics([[200, 201, 202, 203]], ref, 262)
    assert junk == {"gen_unigram_tv": pytest.approx(1.0), "gen_bigram_hit": 0.0}
