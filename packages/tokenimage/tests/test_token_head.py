"""The tokens head: logits in the codec's reading order, the expected image, the likelihood skip, times per token,
padding, the sequential sampler, the noisy-image baseline of the eval and the word metric."""

from __future__ import annotations

import math

import pytest
import torch

from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.diffusion import add_noise_to_timestep, alpha_bar, sample_sequential, token_cross_entropy, token_times
from trainhub_tokenimage.metrics import dictionary_of, evaluate_denoiser, generation_metrics, word_hit_rate
from trainhub_tokenimage.model import TokenDiT
from trainhub_tokenimage.tokenizer import ByteTokenizer


def model(codec: TokenCodec, seed: int = 0, **kw) -> TokenDiT:
    torch.manual_seed(seed)
    kw = {"patch_size": 4, "hidden": 32, "depth": 2, "heads": 2, **kw}
    m = TokenDiT(img_size=codec.img_size, channels=codec.channels, head="tokens", codec=codec, **kw)
    for p in m.parameters():  # leave adaLN-Zero's identity start so every path matters
        torch.nn.init.normal_(p, std=0.05)
    return m


@pytest.mark.parametrize("block", [(4, 4), (2, 2), (2, 4)])
def test_logits_follow_the_codec_reading_order(block):
    """Give the unembedding the identity and the features a one-hot of each block's own raster index (built from
    the patch layout independently): the logits' argmax must be 0, 1, 2, ... in the codec's order."""
    codec = TokenCodec(64, 16, 3, block, 4)  # 64 blocks at 2x2, 16 at 4x4, 32 at 2x4
    cap = codec.capacity
    net = TokenDiT(img_size=16, channels=3, patch_size=4, hidden=64, depth=1, heads=2, head="tokens", codec=codec, skip=False)
    (bh, bw), p = block, 4
    rows, cols = p // bh, p // bw
    feats = torch.zeros(1, (16 // p) ** 2, rows * cols, 64)
    for n in range(feats.shape[1]):
        pr, pc = divmod(n, 16 // p)
        for k in range(rows * cols):
            sr, sc = divmod(k, cols)
            feats[0, n, k, (pr * rows + sr) * codec.grid[1] + pc * cols + sc] = 1.0
    with torch.no_grad():
        net.unembed.weight.copy_(torch.eye(64))
        net.unembed.bias.zero_()
    net.features = lambda *a, **k: feats.flatten(2)  # type: ignore[method-assign]
    out = net.logits(torch.zeros(1, 3, 16, 16), torch.zeros(1))
    assert out.shape == (1, cap, 64)
    assert out.argmax(-1)[0].tolist() == list(range(cap))


def test_expected_image_and_likelihood_read_the_code():
    codec = TokenCodec(262, 32, 3, (4, 4), 4)
    ids = torch.randint(0, 262, (2, codec.capacity), generator=torch.Generator().manual_seed(0))
    clean = torch.stack([codec.encode(r)[0] for r in ids])
    net = model(codec)
    sharp = torch.full((2, codec.capacity, 262), -1e4).scatter(2, ids[..., None], 1e4)
    assert torch.allclose(net.expected_image(sharp), clean)
    # the likelihood is Bayes' rule for one block under the Gaussian noise: compare with log N(x; sqrt(a) p_v, 1 - a)
    t = torch.full((2,), 0.55)
    noisy = add_noise_to_timestep(clean, t, generator=torch.Generator().manual_seed(1))
    a = float(alpha_bar(t[:1])[0])
    x = codec.to_blocks(noisy)
    brute = -((x[:, :, None, :] - math.sqrt(a) * codec.patterns) ** 2).sum(-1) / (2 * (1 - a))
    ours = net.likelihood(noisy, t)
    assert torch.allclose(ours.log_softmax(-1), brute.log_softmax(-1), atol=1e-3)
    # at low noise the skip alone reads every token; at pure noise it says nothing
    low = add_noise_to_timestep(clean, 0.05, generator=torch.Generator().manual_seed(2))
    assert torch.equal(net.likelihood(low, torch.full((2,), 0.05)).argmax(-1), ids)
    flat = net.likelihood(add_noise_to_timestep(clean, 1.0), torch.ones(2))
    assert flat.softmax(-1).max() < 0.05


def test_times_per_token_and_their_noise():
    codec = TokenCodec(262, 16, 3, (4, 4), 4)
    keep = torch.ones(64, codec.capacity, dtype=torch.bool)
    t = token_times(keep, generator=torch.Generator().manual_seed(0))
    assert t.shape == keep.shape and (t >= 0).all() and (t < 1).all()
    clean_frac = (t == 0).float().mean(1)
    assert clean_frac.min() < 0.2 and clean_frac.max() > 0.8  # each image its own noised fraction
    # a block at t = 0 is left clean (up to the schedule's rounding), a block at t = 1 is pure noise
    ids = torch.randint(0, 262, (1, codec.capacity))
    clean = codec.encode(ids[0])[0][None]
    tt = torch.zeros(1, codec.capacity)
    tt[0, 5:] = 1.0
    noisy = add_noise_to_timestep(clean, codec.block_map(tt), generator=torch.Generator().manual_seed(1))
    blocks_n, blocks_c = codec.to_blocks(noisy)[0], codec.to_blocks(clean)[0]
    assert torch.allclose(blocks_n[:5], blocks_c[:5], atol=1e-2) and not torch.allclose(blocks_n[5:], blocks_c[5:], atol=0.1)
    net = model(codec)
    assert net(noisy, tt).shape == clean.shape
    with pytest.raises(ValueError, match="head='tokens'"):
        TokenDiT(img_size=16, patch_size=4, hidden=32, depth=1, heads=2)(noisy, tt)


def test_padding_changes_neither_the_loss_nor_the_gradients():
    codec = TokenCodec(262, 32, 3, (4, 4), 4)
    g = torch.Generator().manual_seed(0)
    items = [codec.encode(torch.randint(0, 262, (n,), generator=g)) for n in (30, 7, 64)]
    clean, mask = torch.stack([x[0] for x in items]), torch.stack([x[1] for x in items])
    keep, ids = codec.block_mask(mask), codec.nearest(clean)
    t = token_times(keep, generator=g)
    noisy = add_noise_to_timestep(clean, codec.block_map(t), generator=g)
    net = model(codec)

    def run(x):
        net.zero_grad()
        loss = token_cross_entropy(net(x, t, mask=mask, logits=True), ids, keep)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    la, ga = run(noisy)
    lb, gb = run(noisy + (1 - mask) * 50 * torch.randn_like(noisy))
    assert torch.equal(la, lb)
    assert all(torch.allclose(ga[n], gb[n], atol=1e-6) for n in ga)
    lc, _ = run(noisy + mask * 0.5)
    assert not torch.equal(la, lc)


def test_sequential_sampler_writes_what_the_model_knows():
    codec = TokenCodec(262, 16, 3, (4, 4), 4)
    target = torch.randint(0, 262, (2, codec.capacity), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 1, 16, 16)
    mask[1, :, 8:] = 0  # the second image has 8 tokens
    valid = codec.block_mask(mask)
    seen = []

    def oracle(x, t):  # certain of the target, and it checks what it is shown: written tokens clean, the rest noise
        done = t == 0
        seen.append(int(done.sum()))
        done &= valid
        shown = codec.nearest(x)
        assert torch.equal(shown[done], target[done])
        return torch.full((*t.shape, 262), -30.0).scatter(2, target[..., None], 30.0)

    out = sample_sequential(oracle, codec, mask, steps=4, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert codec.decode(out[0], mask[0]) == target[0].tolist()
    assert codec.decode(out[1], mask[1]) == target[1, :8].tolist()
    assert seen == [0, 8, 16, 24]  # 4 groups of 4 tokens per image, none written before its step
    # temperature 0 takes the argmax; a flat model at temperature 1 draws every token
    out0 = sample_sequential(lambda x, t: torch.zeros(*t.shape, 262).index_fill(2, torch.tensor([7]), 1.0), codec,
                             mask[:1], steps=16, temperature=0.0)
    assert set(codec.decode(out0[0])) == {7}
    flat = sample_sequential(lambda x, t: torch.zeros(*t.shape, 262), codec, mask[:1], steps=16,
                             generator=torch.Generator().manual_seed(2))
    assert len(set(codec.decode(flat[0]))) > 10


def test_noisy_baseline_reads_what_the_untrained_likelihood_skip_reads():
    """``noisy_acc_tNN`` is the maximum-likelihood reading of the noisy image alone: exactly what a fresh model (zero
    output layer, logits = the likelihood skip) reads, at every level; decoding the shrunk image as if it were
    clean reads less."""
    codec = TokenCodec(262, 32, 3, (4, 4), 4)
    g = torch.Generator().manual_seed(0)
    items = [codec.encode(torch.randint(0, 262, (n,), generator=g)) for n in (64, 64, 40, 64, 64, 64, 20, 64)]
    batch = {"clean": torch.stack([x[0] for x in items]), "mask": torch.stack([x[1] for x in items])}
    torch.manual_seed(0)
    fresh = TokenDiT(img_size=32, patch_size=4, hidden=32, depth=1, heads=2, head="tokens", codec=codec)
    levels = [0.3, 0.5, 0.7]
    m = evaluate_denoiser(fresh, [batch], codec, levels, "cosine", torch.device("cpu"), head="tokens")
    for name in ("t30", "t50", "t70"):
        assert m[f"noisy_acc_{name}"] == m[f"token_acc_{name}"]
    # the same noise as the eval's at t = 0.5 (seed 0, batch 0, level 1), decoded without undoing the shrink
    noise = torch.randn(batch["clean"].shape, generator=torch.Generator().manual_seed(1))
    keep = codec.block_mask(batch["mask"])
    naive = codec.nearest(add_noise_to_timestep(batch["clean"], 0.5, noise=noise))[keep]
    assert float((naive == codec.nearest(batch["clean"])[keep]).float().mean()) < m["noisy_acc_t50"] - 0.03


def test_word_hits_tell_text_from_letters():
    tok = ByteTokenizer()
    text = "Return the number of items in the list. " * 5 + "The list is sorted in place and returns None. " * 5
    words = dictionary_of(text)
    assert {"the", "list", "returns"} <= words and "re" not in words
    assert word_hit_rate(["the list is sorted"], words) == (1.0, 4)
    assert word_hit_rate(["tje lsit is sroted"], words) == (0.25, 4)
    ids = tok.encode(text)
    ref = {"unigram": torch.bincount(torch.tensor(ids), minlength=262), "bigrams": torch.tensor([0])}
    m = generation_metrics([tok.encode("the list returns the number of items")], ref, 262, decode=tok.decode,
                           dictionary=words)
    assert m["gen_word_hit"] == 1.0
    assert m["gen_word_hit_random"] < 0.3  # the same letters at random form few of its words
    assert generation_metrics([ids[:5]], ref, 262)  # no dictionary: no word metrics
    assert "gen_word_hit" not in generation_metrics([ids[:5]], ref, 262)
