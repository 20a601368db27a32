"""``trainhub new plugin NAME [--dir D]``: write a complete, installable trainhub plugin package.

The package trains out of the box: ``pip install -e DIR`` makes ``trainhub plugins`` list it,
``trainhub run NAME`` trains a small residual convnet that removes noise from procedurally drawn
images (loss from core's registry, PSNR eval, PNG sample grids), and ``pytest DIR`` passes.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path
from string import Template

from trainhub.errors import UserError

NAME_RE = re.compile(r"[a-z](?:[a-z0-9_]{0,38}[a-z0-9])?")
#: Names the CLI reads as commands (``trainhub NAME ...`` dispatches to a recipe otherwise).
RESERVED = {"run", "list", "plugins", "config", "doctor", "sample", "eval", "prepare", "analyze", "new", "export", "trainhub"}


def names(name: str) -> dict[str, str]:
    """Every spelling the templates need: recipe/entry-point name, import name, distribution, class prefix."""
    from trainhub import __version__

    return {
        "name": name,
        "module": f"trainhub_{name}",
        "dist": "trainhub-" + name.replace("_", "-"),
        "Title": "".join(part.capitalize() for part in name.split("_") if part),
        "core": ".".join(__version__.split(".")[:2]),
    }


def check_name(name: str) -> None:
    """Raise :class:`UserError` unless ``name`` can be a recipe, entry point and import-name suffix."""
    if not NAME_RE.fullmatch(name):
        guess = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
        hint = f" (try {guess!r})" if NAME_RE.fullmatch(guess) else ""
        raise UserError(f"plugin name {name!r} is not allowed: use lowercase letters, digits and underscores, "
                        f"starting with a letter and not ending with an underscore, at most 40 characters{hint}")
    if name in RESERVED or keyword.iskeyword(name):
        raise UserError(f"plugin name {name!r} is taken by a trainhub command or Python keyword; choose another")
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    if name in plugins.registry["recipes"]:
        owner = plugins.registry["recipes"][name].distribution
        raise UserError(f"a recipe named {name!r} is already installed (from {owner}); choose another name")


def render(name: str) -> dict[str, str]:
    """The package's files: relative path -> text."""
    n = names(name)
    src = f"src/{n['module']}"
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{src}/__init__.py": INIT,
        f"{src}/plugin.py": PLUGIN,
        f"{src}/config.py": CONFIG,
        f"{src}/recipe.py": RECIPE,
        f"{src}/model.py": MODEL,
        f"{src}/data.py": DATA,
        f"{src}/configs/default.yaml": DEFAULT_YAML,
        "tests/conftest.py": CONFTEST,
        f"tests/test_{name}.py": TESTS,
    }
    return {path: Template(text).substitute(n) for path, text in files.items()}


def create(name: str, directory: Path | None = None) -> Path:
    """Write the package for plugin ``name`` into ``directory`` (default ``./trainhub-<name>``); returns it."""
    check_name(name)
    target = Path(directory) if directory is not None else Path.cwd() / names(name)["dist"]
    if target.exists() and not target.is_dir():
        raise UserError(f"--dir {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise UserError(f"--dir {target} exists and is not empty; choose a new folder (nothing was written)")
    for rel, text in render(name).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def main(argv: list[str]) -> int:
    """Entry point of ``trainhub new``."""
    p = argparse.ArgumentParser(prog="trainhub new", description="Scaffold new trainhub packages.")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    pl = sub.add_parser("plugin", help="a plugin package with a working recipe, config, tests and README",
                        description="Write an installable plugin package: a recipe (small model, procedural dataset, "
                        "loss from core) with its config, tests and README. Then: pip install -e DIR; trainhub run NAME.")
    pl.add_argument("name", help="recipe and entry-point name, e.g. my_denoiser (import name trainhub_<name>)")
    pl.add_argument("--dir", help="folder to create (must be new or empty; default ./trainhub-<name>)")
    args = p.parse_args(argv)
    target = create(args.name, Path(args.dir) if args.dir else None)
    n = names(args.name)
    print(f"created {target} (distribution {n['dist']}, import {n['module']}, recipe {args.name})\n"
          f"next:\n"
          f"  pip install -e {target}\n"
          f"  trainhub plugins         # lists {args.name}\n"
          f"  trainhub run {args.name}   # trains on generated images, about a minute on a CPU\n"
          f"  pytest {target / 'tests'}")
    return 0


# ---- templates (string.Template: $name, $module, $dist, $Title, $core) ------------------------------

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "$dist"
version = "0.1.0"
description = "A trainhub plugin: the $name recipe"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["trainhub>=$core", "torch>=2.4"]

[project.optional-dependencies]
test = ["pytest>=8"]

# trainhub finds plugins through this entry-point group; the name is what `trainhub plugins` shows.
[project.entry-points.trainhub]
$name = "$module.plugin"

[tool.hatch.build.targets.wheel]
packages = ["src/$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# $dist

The `$name` recipe for trainhub: a small residual convnet that learns to remove Gaussian noise from
procedurally drawn images. A starting point: replace the model, the data and the step with yours and
keep the tests passing.

## Use

```bash
pip install -e .                       # registers the entry point `$name` (group `trainhub`)
trainhub plugins                       # lists $name with what it registered
trainhub run $name                     # trains; writes runs/$name/<time>/ (config, metrics, checkpoints, PNGs)
trainhub run $name loss.name=l1 train.max_steps=1000
trainhub run $name --config src/$module/configs/default.yaml
trainhub sample $name --checkpoint runs/$name/<time>   # denoise fresh images with the EMA weights
trainhub config $name                  # every key with its default
pytest                                 # the tests (fixtures from trainhub.testing)
```

## Layout

| file | what |
|---|---|
| `src/$module/plugin.py` | the hook implementations trainhub calls: registers the recipe, the model and the dataset by reference (`trainhub list` imports none of them) |
| `src/$module/config.py` | the config schema (typed, validated, documented; no torch, so `trainhub config $name` and `--help` stay fast) |
| `src/$module/recipe.py` | the recipe: build model and data, train step, eval, sample (one instance per run) |
| `src/$module/model.py` | the model, registered as `$name-convnet` (select another registered model with `model.name=...`) |
| `src/$module/data.py` | the procedural dataset, registered as `$name-blobs` |
| `src/$module/configs/default.yaml` | the main settings, a starting point for `--config` |
| `tests/` | schema, model, a short training run, learning, exact resume, a run with another core loss |

The loss comes from trainhub's registry (`charbonnier` by default; `l1`, `mse` or any loss another
plugin registers). The shared trainer handles devices, mixed precision, DDP, accumulation, EMA, LR
schedules, checkpoints and exact resume: see docs/writing-plugins.md in the trainhub repository.
"""

INIT = '''\
"""The $name trainhub plugin."""

__version__ = "0.1.0"
'''

PLUGIN = '''\
"""Hook implementations: what this package adds to trainhub (entry point `$name` in pyproject.toml).

Everything is registered by "module:attr" reference: trainhub imports a module when it is used, so `trainhub list`,
`config` and `--help` do not import this package's model code (or torch).
"""

from __future__ import annotations

from typing import Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("$name", "$module.recipe:${Title}Recipe", config="$module.config:${Title}Config",
             description="$name: a small residual convnet removing noise from generated images")


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("$name-convnet", "$module.model:ResidualConvNet")


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("$name-blobs", "$module.data:NoisyBlobs")
'''

CONFIG = '''\
"""The $name recipe's config schema: every key typed, validated and described (`trainhub run $name --help` lists
them). No torch here: the CLI reads this module alone."""

from __future__ import annotations

from pydantic import Field

from trainhub import RunConfig, Section, TrainConfig


class ModelConfig(Section):
    name: str = Field("$name-convnet", description="a registered model name (see trainhub plugins)")
    width: int = Field(32, ge=1, description="feature channels")
    depth: int = Field(2, ge=1, description="residual blocks")


class DataConfig(Section):
    num_samples: int = Field(1024, ge=1, description="training images")
    val_samples: int = Field(64, ge=0, description="validation images (0: no eval data)")
    size: int = Field(16, ge=4, description="image height and width")
    noise: float = Field(0.2, ge=0.0, description="std of the Gaussian noise added to the inputs")


class LossConfig(Section):
    name: str = Field("charbonnier", description="a registered loss: l1, mse, charbonnier, ...")


class ${Title}Config(RunConfig):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig(max_steps=400, batch_size=16, lr=2e-3, eval_every=100, log_every=20,
                                     best_metric="psnr", best_mode="max", ema=dict(decay=0.99))
'''

RECIPE = '''\
"""The $name recipe: the steps trainhub's shared trainer calls.

Every run builds its own recipe, so what a run derives from its config is set up in `build_models` (the first method
every path calls) and kept on `self`. Randomness in the data comes from the global generators inside `__getitem__`
(trainhub seeds them per batch): that is what makes a resumed run continue exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub import EvalContext, Recipe, StepContext, UserError
from trainhub.kit.image_quality import psnr
from trainhub.kit.media import labelled_grid, save_png
from trainhub.plugins import get_plugins

from $module.config import ${Title}Config
from $module.data import NoisyBlobs


class ${Title}Recipe(Recipe):
    """Denoise procedurally drawn images with a small residual convnet."""

    name = "$name"
    description = "$name: a small residual convnet removing noise from generated images"
    config_class = ${Title}Config

    def build_models(self, config: ${Title}Config) -> dict[str, nn.Module]:
        self.loss_fn = get_plugins().loss(config.loss.name)()  # core's l1, mse, charbonnier, or another plugin's
        factory = get_plugins().model(config.model.name)  # any registered variant, not just ours
        return {"model": factory(width=config.model.width, depth=config.model.depth)}

    def build_data(self, config: ${Title}Config) -> tuple[Dataset, Optional[Dataset]]:
        d, seed = config.data, config.train.seed
        if not d.val_samples and config.train.best_metric:
            raise UserError("data.val_samples=0 leaves nothing to evaluate: also set train.best_metric=null")
        train = NoisyBlobs(d.num_samples, d.size, d.noise, seed=seed)
        val = NoisyBlobs(d.val_samples, d.size, d.noise, seed=seed + 1, fixed_noise=True) if d.val_samples else None
        return train, val

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        # the batch is on the device already; this runs under the trainer's autocast
        out = ctx.models["model"](batch["input"])
        return {"loss": self.loss_fn(out.float(), batch["target"])}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        # eval batches arrive on the CPU: move them; ctx.data shows a progress bar on the console
        scores, baseline, shown = [], [], []
        for batch in ctx.data or []:
            noisy, clean = batch["input"].to(ctx.device), batch["target"].to(ctx.device)
            with ctx.autocast():
                out = ctx.models["model"](noisy)
            scores.append(psnr(out.float().clamp(-1, 1), clean.float(), data_range=2.0))  # images in [-1, 1]
            baseline.append(psnr(noisy.float().clamp(-1, 1), clean.float(), data_range=2.0))
            if not shown:
                k = min(8, len(clean))
                shown = [t.float().clamp(-1, 1).cpu() for pair in zip(noisy[:k], out[:k], clean[:k]) for t in pair]
        if not scores:
            return {}
        grid = labelled_grid(torch.stack(shown), 3, ["noisy", "denoised", "clean"])
        ctx.media.image("noisy_denoised_clean", grid, caption="noisy | denoised | clean")
        return {"psnr": float(torch.cat(scores).mean()), "psnr_noisy": float(torch.cat(baseline).mean())}

    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--count", type=int, default=16, help="images to generate and denoise")
        parser.add_argument("--seed", type=int, default=1234)

    def sample(self, models: dict[str, nn.Module], config: ${Title}Config, args: argparse.Namespace, out_dir: Path) -> None:
        d = config.data
        data = NoisyBlobs(args.count, d.size, d.noise, seed=args.seed, fixed_noise=True)
        noisy = torch.stack([data[i]["input"] for i in range(len(data))]).to(args.device)
        out = models["model"](noisy).clamp(-1, 1)
        grid = labelled_grid(torch.stack([t.cpu() for pair in zip(noisy, out) for t in pair]), 2, ["noisy", "denoised"])
        path = save_png(out_dir / "noisy_denoised.png", grid)
        print(f"wrote {path}")
'''

MODEL = '''\
"""A small residual convnet: predicts the noise and subtracts it from the input."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class ResidualConvNet(nn.Module):
    """``out = x - net(x)`` for 3-channel images; the last layer starts at zero, so training starts at identity."""

    def __init__(self, width: int = 32, depth: int = 2, channels: int = 3) -> None:
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        for block in self.blocks:
            h = block(h)
        return x - self.tail(torch.nn.functional.gelu(h))
'''

DATA = '''\
"""Procedural images: soft coloured discs on a colour gradient, and noisy copies of them."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def draw_blobs(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n x 3 x size x size`` images in [-1, 1]: a random gradient plus three soft discs each."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    c0, c1 = torch.rand(n, 3, 1, 1, generator=generator), torch.rand(n, 3, 1, 1, generator=generator)
    angle = torch.rand(n, 1, 1, 1, generator=generator) * 6.2832
    t = (torch.cos(angle) * xx + torch.sin(angle) * yy).clamp(0, 1)
    img = c0 + (c1 - c0) * t
    for _ in range(3):
        cx, cy = torch.rand(2, n, 1, 1, 1, generator=generator)
        r = 0.1 + 0.2 * torch.rand(n, 1, 1, 1, generator=generator)
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        mask = torch.sigmoid((r - ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()) * size * 2)
        img = img * (1 - mask) + colour * mask
    return img * 2 - 1


class NoisyBlobs(Dataset):
    """Items ``{"input": noisy, "target": clean}``. Images are fixed by ``seed``; the noise is drawn per
    access from the global torch RNG (trainhub reseeds it per batch, so resume is exact), or fixed
    per item with ``fixed_noise`` (validation)."""

    def __init__(self, num_samples: int, size: int = 16, noise: float = 0.2, seed: int = 0, fixed_noise: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = draw_blobs(num_samples, size, g)
        self.noise = noise
        self.fixed = noise * torch.randn(self.images.shape, generator=g) if fixed_noise else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clean = self.images[i]
        eps = self.fixed[i] if self.fixed is not None else self.noise * torch.randn_like(clean)
        return {"input": clean + eps, "target": clean}
'''

DEFAULT_YAML = """\
# The main settings of the $name recipe (`trainhub config $name` prints every key).
# Use: trainhub run $name --config this.yaml [key.path=value ...]
model:
  name: $name-convnet
  width: 32
  depth: 2
data:
  num_samples: 1024
  val_samples: 64
  size: 16
  noise: 0.2
loss:
  name: charbonnier
train:
  max_steps: 400
  batch_size: 16
  lr: 0.002
  eval_every: 100
  best_metric: psnr
  best_mode: max
"""

CONFTEST = '''\
import os

import torch

torch.set_num_threads(1)  # tiny models: threads cost more than they give
os.environ.setdefault("WANDB_MODE", "disabled")
'''

TESTS = '''\
"""Tests for the $name plugin, using the fixtures of trainhub.testing (a pytest plugin that comes with trainhub)."""

from __future__ import annotations

from importlib.resources import files

import torch

from $module.model import ResidualConvNet

SMALL = ["data.num_samples=64", "data.val_samples=16", "train.batch_size=8"]


def test_config_schema_and_shipped_config(check_config_schema):
    check_config_schema("$name", files=[files("$module") / "configs" / "default.yaml"])


def test_model_keeps_shape_and_starts_at_identity():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(ResidualConvNet(width=8, depth=1)(x), x)


def test_plugin_registers_its_parts(trainhub_plugins):
    assert trainhub_plugins.recipe("$name").name == "$name"
    assert trainhub_plugins.model("$name-convnet") is ResidualConvNet
    assert len(trainhub_plugins.dataset("$name-blobs")(4, size=8)) == 4


def test_trains_evaluates_and_writes_samples(run_recipe, read_metrics):
    res = run_recipe("$name", steps=4, overrides=SMALL)
    assert {"psnr", "psnr_noisy"} <= set(res.eval_metrics)
    assert read_metrics(res.run_dir, "train")[-1]["step"] == 4
    assert list((res.run_dir / "samples").rglob("noisy_denoised_clean.png"))


def test_learns_to_denoise(run_recipe):
    res = run_recipe("$name", steps=30, overrides=SMALL + ["train.ema.enabled=false"])
    assert res.eval_metrics["psnr"] > res.eval_metrics["psnr_noisy"] + 3.0  # about +6 dB after 30 steps


def test_any_registered_loss_can_be_used(run_recipe):
    res = run_recipe("$name", steps=2, overrides=SMALL + ["loss.name=l1"])
    assert res.status == "completed"


def test_resume_is_exact(tmp_path, interrupt_and_resume):
    """A real SIGTERM after step 3 saves and stops; the resumed run ends bit-identical to an uninterrupted one."""
    from trainhub import train
    from trainhub.testing import FAST, assert_same_weights

    overrides = FAST + SMALL + ["train.max_steps=6", "train.eval_every=0"]
    whole = train("$name", overrides=overrides, run_dir=tmp_path / "whole")
    resumed = interrupt_and_resume("$name", overrides, tmp_path / "cut", at=3)
    assert_same_weights(whole.last_checkpoint, resumed.last_checkpoint, files=("model.safetensors", "ema.safetensors"))
'''
