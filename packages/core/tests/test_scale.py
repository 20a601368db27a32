"""Scale features on CPU: batch_size auto against a simulated memory limit, compile, MFU arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from trainhub.builtin.tiny import TinyRecipe
from trainhub.training import autobatch
from trainhub.training.flops import count_flops, mfu
from trainhub.training.run import train


class MemoryLimited(TinyRecipe):
    """The tiny recipe, but its forward raises the real OOM error type above ``limit`` samples."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.trials: list[int] = []

    def train_step(self, batch, ctx):
        n = batch["x"].shape[0]
        self.trials.append(n)
        if n > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {n} samples > {self.limit}")
        return super().train_step(batch, ctx)


def test_largest_fitting_searches_powers_then_bisects():
    calls: list[int] = []

    def trial(b: int) -> None:
        calls.append(b)
        if b > 37:
            raise torch.OutOfMemoryError("no")

    assert autobatch.largest_fitting(trial, 1024) == 37
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert autobatch.largest_fitting(lambda b: None, 100) == 100
    with pytest.raises(ValueError):  # other errors are not swallowed
        autobatch.largest_fitting(lambda b: (_ for _ in ()).throw(ValueError("bug")), 8)


def test_auto_batch_size_finds_limit_keeps_global_batch_and_is_remembered(tmp_path, quiet):
    recipe = MemoryLimited(24)
    ov = quiet + ["train.batch_size=auto", "train.global_batch_size=64", "train.max_steps=3", "data.num_samples=512"]
    res = train(recipe, overrides=ov, run_dir=tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "auto_batch_size.json").read_text())
    assert saved["largest_fitting"] == 22  # 24 fits, 25 fails -> 24, minus the 5% margin
    assert (saved["batch_size"], saved["gradient_accumulation_steps"]) == (22, 3)  # 3 x 22 >= 64
    state = json.loads((res.last_checkpoint / "training_state.json").read_text())
    assert (state["batch_size"], state["gradient_accumulation_steps"]) == (22, 3)
    recipe.trials.clear()
    train(recipe, overrides=ov + ["train.max_steps=5"], run_dir=tmp_path / "r", resume="auto")
    assert recipe.trials and set(recipe.trials) == {22}  # no probing on resume


def test_compile_on_cpu_trains(tmp_path, quiet):
    pytest.importorskip("torch._inductor")
    res = train("tiny", overrides=quiet + ["train.compile=true", "train.max_steps=3", "model.hidden=16"], run_dir=tmp_path / "c")
    assert res.status == "completed" and res.step == 3
    # not counted: under the counting dispatch mode the compiled model would run its first step eagerly
    records = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("kind") == "train"]
    assert train_records and not any("flops_per_sample" in r for r in train_records)


def test_counted_flops_equal_torchs_flop_counter_forward_and_backward():
    """Strided and transposed convolutions, linear, bmm, baddbmm and attention, forward and backward: the count made
    with torch's formulas on shapes taken here equals FlopCounterMode's."""
    from torch.utils.flop_counter import FlopCounterMode

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
            self.lin = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.up(self.down(x)).flatten(2)  # (N, 4, 1024)
            a = torch.bmm(h, h.transpose(1, 2))
            q = self.lin(h.reshape(h.shape[0], 4, 64, 16))
            o = nn.functional.scaled_dot_product_attention(q, q, q)
            return a.sum() + o.sum() + torch.baddbmm(a, a, a).sum()

    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 3, 32, 32, requires_grad=True)
    ours = count_flops(lambda: net(x).backward())
    reference = FlopCounterMode(display=False)
    with reference:
        net(x).backward()
    assert ours == reference.get_total_flops() > 0


def test_flops_and_mfu_arithmetic(tmp_path, quiet):
    lin = nn.Linear(100, 50, bias=False)
    x = torch.randn(8, 100, requires_grad=True)
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * 8 * 100 * 50  # fwd + grad input + grad weight
    assert mfu(1e9, 100.0, 1e12) == pytest.approx(0.1)
    res = train("tiny", overrides=quiet + ["model.dim=8", "model.hidden=64", "model.depth=2", "train.max_steps=5"], run_dir=tmp_path / "f")
    line = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x][-1]
    # forward 2*(8*64 + 64*64 + 64*1) per sample; backward twice that, minus the input gradient of layer 1
    assert line["flops_per_sample"] == 3 * 2 * (8 * 64 + 64 * 64 + 64) - 2 * 8 * 64
    assert line["tflops"] == pytest.approx(line["flops_per_sample"] * line["samples_per_sec"] / 1e12)


class Blocky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(3)])
        self.head = nn.Linear(8, 1)
        self.calls = 0

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_activation_checkpointing_recomputes_blocks_with_equal_gradients():
    from trainhub.recipe import Recipe
    from trainhub.training.devices import checkpoint_blocks

    torch.manual_seed(0)
    a = Blocky()
    b = Blocky()
    b.load_state_dict(a.state_dict())
    calls = []
    for blk in Recipe().blocks(b):
        blk[0].register_forward_hook(lambda m, i, o: calls.append(1))  # inner layers run again in recompute
    checkpoint_blocks(Recipe().blocks(b))
    x = torch.randn(4, 8)
    a(x).sum().backward()
    b(x).sum().backward()
    assert len(calls) == 6  # three blocks, each run again during backward
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)
