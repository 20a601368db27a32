"""The SR3 UNet: shapes, the reference's naming, and its attention arithmetic."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainhub_sr3 import compat
from trainhub_sr3.diffusion import Schedule, make_betas
from trainhub_sr3.model import SelfAttention, SR3UNet

SMALL = dict(inner_channel=16, norm_groups=4, channel_multiplier=[1, 2, 2], attn_res=[8], res_blocks=2, image_size=32)


def test_output_shape_and_noise_level_forms():
    net = SR3UNet(**SMALL).eval()
    x, level = torch.randn(2, 6, 32, 32), torch.rand(2)
    out = net(x, level)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, net(x, level.view(2, 1)))  # the reference passes B x 1


def test_paper_config_builds_on_meta():
    with torch.device("meta"):
        net = SR3UNet(inner_channel=64, norm_groups=32, channel_multiplier=[1, 2, 4, 8, 8], attn_res=[16], res_blocks=2, image_size=128)
    n = sum(p.numel() for p in net.parameters())
    assert 90e6 < n < 100e6  # the 16->128 SR3 UNet has ~97.8M parameters
    assert sum(isinstance(m, SelfAttention) for m in net.modules()) == 2 + 3 + 1  # 2 down, 3 up at 16px, 1 mid


def test_state_dict_uses_reference_names():
    keys = set(SR3UNet(**SMALL).state_dict())
    for k in ("noise_level_mlp.1.weight", "noise_level_mlp.3.bias", "downs.0.weight",
              "downs.1.res_block.noise_func.noise_func.0.weight", "downs.1.res_block.block1.block.0.weight",
              "downs.1.res_block.block1.block.3.weight", "downs.1.res_block.block2.block.3.bias", "downs.3.conv.weight",
              "downs.4.res_block.res_conv.weight", "mid.0.attn.norm.weight", "mid.0.attn.qkv.weight", "mid.0.attn.out.bias",
              "ups.0.res_block.res_conv.weight", "final_conv.block.0.weight", "final_conv.block.3.weight"):
        assert k in keys, k


def _reference_attention(att: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The reference's attention arithmetic, written out with einsum (independent of our SDPA path)."""
    b, c, h, w = x.shape
    qkv = att.qkv(att.norm(x)).view(b, att.heads, 3 * c // att.heads, h, w)
    q, k, v = qkv.chunk(3, dim=2)
    a = torch.einsum("bnchw,bncyx->bnhwyx", q, k) / math.sqrt(c)
    a = torch.softmax(a.reshape(b, att.heads, h, w, -1), -1).reshape(b, att.heads, h, w, h, w)
    out = torch.einsum("bnhwyx,bncyx->bnchw", a, v)
    return att.out(out.reshape(b, c, h, w)) + x


def test_attention_matches_reference_arithmetic():
    torch.manual_seed(0)
    for heads in (1, 2):
        att = SelfAttention(16, heads=heads, groups=4)
        x = torch.randn(2, 16, 6, 5)
        torch.testing.assert_close(att(x), _reference_attention(att, x), rtol=1e-5, atol=1e-5)


def test_reference_state_dict_round_trip_and_file(tmp_path):
    torch.manual_seed(0)
    ours = SR3UNet(**SMALL).eval()
    sched = Schedule(make_betas("linear", 50, 1e-6, 1e-2))
    theirs = compat.to_reference(ours.state_dict(), sched)
    assert all(k.startswith("denoise_fn.") for k in theirs if k not in compat.SCHEDULE_BUFFERS)
    assert set(compat.SCHEDULE_BUFFERS) <= set(theirs)
    # a file in their format: DataParallel prefix included, loaded tensor-only
    torch.save({"module." + k: v for k, v in theirs.items()}, tmp_path / "I20_E1_gen.pth")
    fresh = SR3UNet(**SMALL).eval()
    fresh.load_state_dict(compat.load_gen(tmp_path / "I20_E1_gen.pth"), strict=True)
    x, level = torch.randn(2, 6, 32, 32), torch.rand(2, 1)
    torch.testing.assert_close(fresh(x, level), ours(x, level), rtol=0, atol=0)


def test_sqrt_gamma_encoding_is_the_references():
    from trainhub_sr3.model import NoiseLevelEncoding

    level = torch.tensor([0.05, 0.5, 0.999])
    half = 8
    angles = level[:, None] * torch.exp(-math.log(1e4) * torch.arange(half) / half)[None]
    torch.testing.assert_close(NoiseLevelEncoding(16, "sqrt_gamma")(level), torch.cat([angles.sin(), angles.cos()], -1), rtol=0, atol=0)
    assert SR3UNet(**SMALL).noise_level_mlp[0].kind == "sqrt_gamma"  # the constructor default loads reference weights


def test_log_snr_encoding_tells_the_low_noise_levels_apart():
    """Issue 3: encoding sqrt(gamma) itself maps level 0.9999995 (a clean input) and 0.99 (noise std 0.14, as large as
    the 8 -> 32 residual) to vectors 0.01 apart, and the embedded default's UNet learnt to ignore its noise level."""
    from trainhub_sr3.model import NoiseLevelEncoding

    clean, noisy = torch.tensor([0.9999995]), torch.tensor([0.99])
    ref, ours = NoiseLevelEncoding(32, "sqrt_gamma"), NoiseLevelEncoding(32, "log_snr")
    assert (ref(clean) - ref(noisy)).abs().max() < 0.011
    assert (ours(clean) - ours(noisy)).abs().max() > 0.5
    assert torch.isfinite(ours(torch.tensor([0.0, 1e-8, 1.0]))).all()  # the clamped ends


def _fit_level_detector(encoding: str, steps: int = 60) -> float:
    """Train a small UNet to output 1 for a near-clean level and 0 for level 0.99 (the input carries no hint);
    returns the final squared error."""
    torch.manual_seed(0)
    net = SR3UNet(**dict(SMALL, channel_multiplier=[1, 2], res_blocks=1, image_size=8), noise_encoding=encoding)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(1, 6, 8, 8).expand(8, 6, 8, 8)  # the same input: only the level tells them apart
    level = torch.tensor([0.9999995, 0.99] * 4)
    target = (level > 0.999).float().view(-1, 1, 1, 1).expand(8, 3, 8, 8)
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x, level) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_the_unet_can_learn_to_tell_clean_from_slightly_noisy_levels():
    assert _fit_level_detector("log_snr") < 0.05
    assert _fit_level_detector("sqrt_gamma") > 0.15  # what the embedded default had: the level is all but invisible


def test_ddpm_timestep_embedding_is_the_published_sinusoid():
    from trainhub_sr3.model import NoiseLevelEncoding

    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 1999.0])
    dim = 16
    freqs = torch.exp(-math.log(10000) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = t.double()[:, None] * freqs[None]
    want = torch.cat([angles.sin(), angles.cos()], -1).float()
    torch.testing.assert_close(NoiseLevelEncoding(dim, "timestep")(t), want, rtol=0, atol=3e-4)  # float32 angles up to 2000 rad


def test_ddpm_network_projects_a_swish_of_the_time_embedding_in_every_block():
    """ddpm_modules/unet.py: each ResnetBlock adds Linear(Swish(time_mlp(t))) to block1's output."""
    torch.manual_seed(0)
    net = SR3UNet(**SMALL, network="ddpm").eval()
    t = torch.tensor([3.0, 700.0])
    mlp = net.noise_level_mlp
    emb = mlp[3](F.silu(mlp[1](mlp[0](t))))  # time_mlp: TimeEmbedding, Linear, Swish, Linear
    block = net.downs[1].res_block
    got = {}
    block.block1.register_forward_hook(lambda m, i, o: got.__setitem__("h", o))
    block.noise_func.register_forward_hook(lambda m, i, o: got.__setitem__("out", o))
    net(torch.randn(2, 6, 32, 32), t)
    lin = block.noise_func.noise_func[0]
    want = got["h"] + (F.silu(emb) @ lin.weight.T + lin.bias)[:, :, None, None]
    torch.testing.assert_close(got["out"], want, rtol=1e-5, atol=1e-5)


def test_ddpm_weights_in_the_reference_naming_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = SR3UNet(**SMALL, network="ddpm").eval()
    theirs = compat.to_reference(ours.state_dict(), network="ddpm")
    for k in ("denoise_fn.time_mlp.0.inv_freq", "denoise_fn.time_mlp.1.weight", "denoise_fn.time_mlp.3.bias",
              "denoise_fn.downs.1.res_block.mlp.1.weight", "denoise_fn.mid.0.res_block.mlp.1.bias", "denoise_fn.final_conv.block.3.weight"):
        assert k in theirs, k
    assert not any("noise_level_mlp" in k or "noise_func" in k for k in theirs)
    torch.testing.assert_close(theirs["denoise_fn.time_mlp.0.inv_freq"],
                               torch.exp(torch.arange(0, 16, 2).float() * (-math.log(10000) / 16)))
    torch.save(theirs, tmp_path / "I1_E1_gen.pth")
    w = compat.read_gen(tmp_path / "I1_E1_gen.pth")
    assert w.network == "ddpm"
    fresh = SR3UNet(**SMALL, network="ddpm").eval()
    fresh.load_state_dict(w.state, strict=True)
    x, t = torch.randn(2, 6, 32, 32), torch.tensor([5.0, 60.0])
    torch.testing.assert_close(fresh(x, t), ours(x, t), rtol=0, atol=0)
