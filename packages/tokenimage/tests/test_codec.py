from __future__ import annotations

import pytest
import torch

from trainhub import UserError
from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.tokenizer import ByteTokenizer, load_tokenizer
from trainhub_tokenimage.tools import load_token_png, save_token_png

LAYOUTS = [  # vocab, img, channels, block, base
    (262, 64, 3, (2, 2), 4),
    (262, 64, 3, (1, 1), 8),
    (262, 32, 1, (4, 4), 2),
    (50_000, 64, 3, (2, 2), 4),
    (7, 16, 3, (4, 4), 3),
]


@pytest.mark.parametrize("vocab,img,ch,block,base", LAYOUTS)
def test_round_trip_random_sequences(vocab, img, ch, block, base):
    codec = TokenCodec(vocab, img, ch, block, base)
    g = torch.Generator().manual_seed(vocab)
    for n in (0, 1, codec.capacity // 3, codec.capacity):
        ids = torch.randint(0, vocab, (n,), generator=g)
        image, mask = codec.encode(ids)
        assert image.shape == (ch, img, img) and mask.shape == (1, img, img)
        assert image.min() >= -1 and image.max() <= 1
        assert codec.decode(image, mask) == ids.tolist()
        assert int(mask.sum()) == n * block[0] * block[1]
        assert (image * (1 - mask)).abs().sum() == 0  # padding is 0
    # extreme ids and a batch
    ids = torch.tensor([0, vocab - 1] * (codec.capacity // 2))
    batch = torch.stack([codec.encode(ids)[0]] * 2)
    assert codec.decode(batch) == [ids.tolist()] * 2


@pytest.mark.parametrize("text", ["Grüße, naïve café — 世界 🐍", "x" * 5000, "line\nbreak\ttab\x00nul"])
def test_round_trip_unicode_text(text):
    tok = ByteTokenizer()
    codec = TokenCodec(tok.vocab_size)
    ids = [tok.bos_id] + tok.encode(text) + [tok.eos_id]
    out = []
    for k in range(0, len(ids), codec.capacity):  # long text: consecutive images
        out += codec.decode(*codec.encode(ids[k : k + codec.capacity]))
    assert tok.decode(out) == text


def test_round_trip_hf_tokenizer(hf_tokenizer_file):
    tok = load_tokenizer(str(hf_tokenizer_file))
    codec = TokenCodec(tok.vocab_size)
    text = "Grüße aus Köln — def f(x): return x * 2"
    assert tok.decode(codec.decode(*codec.encode(tok.encode(text)))) == text


def test_capacity_arithmetic():
    assert TokenCodec(262).capacity == 16 * 16 and TokenCodec(262).cells == 48  # the default 4x4-pixel block
    assert TokenCodec(262, 64, 3, (2, 2), 4).capacity == 32 * 32
    c = TokenCodec(262, 64, 3, (2, 4), 4)
    assert c.capacity == 32 * 16 and c.cells == 24 and c.digits == 5  # 4**4 = 256 < 262 <= 4**5
    assert TokenCodec(256, 64, 1, (1, 1), 256).capacity == 4096
    assert TokenCodec(50_000, 64, 3, (2, 2), 4).digits == 8  # 4**8 = 65536
    assert "capacity 256 tokens" in TokenCodec(262).describe()
    with pytest.raises(UserError, match="digits"):
        TokenCodec(262, 64, 1, (1, 2), 4)  # 5 digits need 5 cells, a 1x2x1 block has 2
    with pytest.raises(UserError, match="divide"):
        TokenCodec(262, 64, 3, (3, 3), 4)
    with pytest.raises(ValueError, match="capacity"):
        TokenCodec(262, 8, 3, (2, 2), 4).encode(list(range(17)))


def test_nearest_valid_code_under_noise():
    codec = TokenCodec(262)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 262, (codec.capacity,), generator=g)
    image, mask = codec.encode(ids)
    # per-cell noise below half the level spacing (1/3) always decodes exactly
    small = (torch.rand(image.shape, generator=g) * 2 - 1) * 0.33
    assert codec.decode(image + small, mask) == ids.tolist()
    # heavy noise still decodes to valid ids only, and more often right than by chance
    noisy = image + 0.5 * torch.randn(image.shape, generator=g)
    out = torch.tensor(codec.decode(noisy, mask))
    assert out.min() >= 0 and out.max() < 262
    assert (out == ids).float().mean() > 0.2
    # nearest is the argmin of the squared distance over all valid patterns (brute force)
    blocks = codec.to_blocks(noisy)
    brute = torch.cdist(blocks, codec.patterns).argmin(-1)
    assert torch.equal(codec.nearest(noisy), brute)
    # the same with a large vocabulary (8 digits, 65,536 codes of which 50,000 are tokens): both the per-digit
    # rounding and the exhaustive search over tokens are exercised
    big = TokenCodec(50_000, 16, 3, (2, 2), 4)
    x = big.encode(torch.randint(0, 50_000, (big.capacity,), generator=g))[0]
    x = x + 0.6 * torch.randn(x.shape, generator=g)
    ids = (big._round_digits(big.digit_means(x)) * big._powers).sum(-1)
    assert (ids >= 50_000).any() and (ids < 50_000).any()
    assert torch.equal(big.nearest(x), torch.cdist(big.to_blocks(x), big.patterns).argmin(-1))
    # snapping is a projection onto valid images
    snapped = codec.snap(noisy)
    assert torch.equal(codec.snap(snapped), snapped) and torch.equal(codec.nearest(snapped), out)


def test_valid_code_flag():
    codec = TokenCodec(262, 64, 3, (2, 2), 4)  # 1024 blocks: room for every id
    image, mask = codec.encode(list(range(262)))
    assert codec.is_valid_code(image)[:262].all()
    assert not codec.is_valid_code(torch.ones_like(image)).any()  # all digits 3 = id 1023, not a token


def test_png_round_trip(tmp_path):
    codec = TokenCodec(262)
    ids = torch.randint(0, 262, (200,))
    image, mask = codec.encode(ids)
    save_token_png(tmp_path / "x.png", image, mask)
    image2, mask2 = load_token_png(tmp_path / "x.png")
    assert torch.equal(mask2, mask) and codec.decode(image2, mask2) == ids.tolist()
