"""The network: shifted-window grouping against a plain per-window mask, chunked == unchunked spike attention,
checkpointing, profiling, alignment."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from trainhub_vrt_spike.model import (
    TMSA,
    ChunkSpec,
    FlowEstimator,
    PixelAttention,
    VRTSpike,
    effective_window,
    flow_warp,
    window_merge,
    window_partition,
)


def tiny_net(**kw) -> VRTSpike:
    args = dict(depths=[2, 1, 1, 1, 1, 1, 1, 1], embed_dims=[8] * 8, num_heads=[2] * 8, window_size=(2, 4, 4), flow_width=4,
                spike_dim=8, spike_segments=2, spike_encoder_blocks=1, spike_tsa=ChunkSpec(heads=2), fuse=ChunkSpec(heads=2),
                fuse_stages=(1, 4, 7), drop_path_rate=0.0)
    args.update(kw)
    return VRTSpike(4, **args)


def reference_window_attention(blk: TMSA, x: torch.Tensor) -> torch.Tensor:
    """Swin-style: label the padded, shifted volume by region, one mask per window, attention window by window."""
    b, d, h, w, c = x.shape
    win, shift = effective_window((d, h, w), blk.window, blk.shift)
    y = blk.norm1(x)
    pad = [(-s) % n for s, n in zip((d, h, w), win)]
    y = F.pad(y, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    size = y.shape[1:4]
    y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    labels = torch.zeros(1, *size, 1)
    axes = [((slice(0, -n), slice(-n, -s), slice(-s, None)) if s else (slice(None),)) for n, s in zip(win, shift)]
    cnt = 0
    for sd in axes[0]:
        for sh in axes[1]:
            for sw in axes[2]:
                labels[:, sd, sh, sw] = cnt
                cnt += 1
    lab = window_partition(labels, win)[0, :, :, 0]  # (nW, N)
    windows = window_partition(y, win)  # (B, nW, N, C)
    attn = blk.attn
    n_tok = windows.shape[2]
    coords = torch.stack(torch.meshgrid(*[torch.arange(k) for k in win], indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :] + torch.tensor(attn.window)[:, None, None] - 1
    idx = rel[0] * (2 * attn.window[1] - 1) * (2 * attn.window[2] - 1) + rel[1] * (2 * attn.window[2] - 1) + rel[2]
    bias = attn.bias_table[idx].permute(2, 0, 1)
    out = torch.empty_like(windows)
    for wi in range(windows.shape[1]):
        mask = torch.where(lab[wi][:, None] == lab[wi][None, :], 0.0, float("-inf"))
        q, k, v = attn.qkv(windows[:, wi]).chunk(3, -1)
        split = lambda t: t.view(b, n_tok, attn.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias + mask
        out[:, wi] = attn.proj((s.softmax(-1) @ v).transpose(1, 2).reshape(b, n_tok, c))
    y = window_merge(out, win, size)
    y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
    return y[:, :d, :h, :w]


@pytest.mark.parametrize("size", [(4, 8, 8), (5, 6, 10), (2, 4, 4)])
def test_shifted_window_groups_match_per_window_masks(size):
    torch.manual_seed(0)
    blk = TMSA(8, 2, (2, 4, 4), (1, 2, 2), mutual=False, mlp_ratio=2.0, drop_path=0.0, checkpoint_attn=False, checkpoint_ffn=False)
    x = torch.randn(2, *size, 8)
    torch.testing.assert_close(blk._attention(x), reference_window_attention(blk, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", [
    ChunkSpec(heads=2, adaptive_chunk=False, chunk_size=3, chunk_shape="square"),
    ChunkSpec(heads=2, adaptive_chunk=False, chunk_size=2, chunk_shape="rows"),
    ChunkSpec(heads=2, adaptive_chunk=True, max_batch_tokens=2 * 6 * 5, chunk_shape="square"),
    ChunkSpec(heads=2, adaptive_chunk=True, max_batch_tokens=2 * 6 * 11, chunk_shape="rows"),
])
@pytest.mark.parametrize("checkpointed", [False, True])
def test_chunked_fusion_equals_unchunked(spec, checkpointed):
    torch.manual_seed(0)
    whole = PixelAttention(8, 6, ChunkSpec(heads=2, adaptive_chunk=False, chunk_size=0), max_offset=4, zero_init=False)
    with torch.no_grad():
        whole.time_bias.normal_()
    chunked = copy.deepcopy(whole)
    chunked.spec, chunked.checkpoint_chunks = spec, checkpointed
    assert len(list(spec.tiles(2, 6, 7, 9))) > 1
    x = torch.randn(2, 3, 7, 9, 8, requires_grad=True)
    kv = torch.randn(2, 6, 7, 9, 6, requires_grad=True)
    qt, kt = torch.tensor([2, 6, 10]), torch.arange(6) * 2 + 1
    a, b = whole(x, kv, qt, kt), chunked(x, kv, qt, kt)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), [x, kv, *whole.parameters()])
    gb = torch.autograd.grad(b.square().sum(), [x, kv, *chunked.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


def test_untrained_network_returns_its_input_and_handles_any_size():
    torch.manual_seed(0)
    net = tiny_net()
    for n, h, w in [(3, 13, 10), (1, 8, 8), (2, 16, 24)]:
        blur, spike = torch.rand(1, n, 3, h, w), torch.rand(1, n, 4, h, w)
        out = net(blur, spike)
        assert out.shape == blur.shape
        torch.testing.assert_close(out, blur)  # zero-initialised output conv: identity before training
    assert net.transformer_blocks() and all(isinstance(b, TMSA) for b in net.transformer_blocks())


def test_checkpointing_changes_nothing_but_memory():
    torch.manual_seed(0)
    plain = tiny_net()
    for zero_init in [plain.conv_last] + [f.proj for f in plain.fuse.values()]:  # as after some training
        torch.nn.init.normal_(zero_init.weight, std=0.1)
    ckpt = tiny_net(use_checkpoint_attn=True, use_checkpoint_ffn=True)
    ckpt.load_state_dict(plain.state_dict())
    blur, spike = torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 4, 16, 16)
    a, b = plain(blur, spike), ckpt(blur, spike)
    torch.testing.assert_close(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert plain.spike.tsa.q.weight.grad.abs().sum() > 0  # the spike branch is trained


def test_profile_times_every_stage_and_fusion():
    net = tiny_net(profile=True)
    net(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 2, 4, 16, 16))
    expected = {"align", "spike_encoder", "spike_tsa", "spike_pyramid", "reconstruction", "forward", "fuse1", "fuse4", "fuse7"}
    expected |= {f"stage{i}" for i in range(1, 9)}
    assert set(net.timings) == expected
    assert all(v >= 0 for v in net.timings.values())
    parts = sum(v for k, v in net.timings.items() if k != "forward")
    assert parts <= net.timings["forward"] * 1.05
    quiet = tiny_net()
    quiet(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 2, 4, 16, 16))
    assert quiet.timings == {}


def test_flow_warp_and_estimator_shapes():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    flow = torch.zeros(1, 2, 5, 6)
    torch.testing.assert_close(flow_warp(x, flow), x)
    flow[:, 0] = 1.0  # sample one pixel to the right
    torch.testing.assert_close(flow_warp(x, flow)[..., :-1], x[..., 1:])
    flows = FlowEstimator(4, width=4)(torch.rand(3, 4, 16, 24), torch.rand(3, 4, 16, 24))
    assert [tuple(f.shape) for f in flows] == [(3, 2, 16, 24), (3, 2, 8, 12), (3, 2, 4, 6), (3, 2, 2, 3)]


def test_flow_weights_load_from_a_local_file(tmp_path, tiny):
    from safetensors.torch import save_file

    from trainhub import UserError
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config
    from trainhub_vrt_spike.recipe import build_model

    plugins = get_plugins()
    resolve = lambda ov: resolve_config(plugins.recipe("vrt_spike"), plugins, None, tiny + ov)  # noqa: E731
    torch.manual_seed(1)
    donor = build_model(resolve(["train.seed=1"]))
    for p in donor.flow.parameters():
        torch.nn.init.normal_(p)
    save_file({f"flow.{k}": v.contiguous() for k, v in donor.flow.state_dict().items()}, str(tmp_path / "flow.safetensors"))
    torch.save(donor.flow.state_dict(), tmp_path / "flow.pth")  # a reference-style .pth state dict (read with weights_only)
    for name in ("flow.safetensors", "flow.pth"):
        net = build_model(resolve([f"model.flow_weights={tmp_path / name}"]))
        for k, v in donor.flow.state_dict().items():
            torch.testing.assert_close(net.flow.state_dict()[k], v, msg=k)
    with pytest.raises(UserError, match="does not fit the flow estimator"):
        build_model(resolve([f"model.flow_weights={tmp_path / 'flow.pth'}", "model.flow_width=6"]))
    with pytest.raises(UserError, match="is not a file"):
        build_model(resolve([f"model.flow_weights={tmp_path / 'missing.pth'}"]))


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    torch.manual_seed(0)
    net = tiny_net(use_checkpoint_attn=True)
    for zero_init in [net.conv_last] + [f.proj for f in net.fuse.values()]:  # as after some training
        torch.nn.init.normal_(zero_init.weight, std=0.1)
    blur, spike = torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 4, 16, 16)
    ref = net(blur, spike)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(blur, spike)
    assert (out.float() - ref).abs().max() < 0.05
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert net.spike.tsa.q.weight.grad.abs().sum() > 0
