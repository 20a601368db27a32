"""The parameter-output monitor (logger ``param_outputs``): every ``save_param_freq`` steps, writes
weights, gradients and activations of the monitored layers (safetensors), per-layer statistics and
loss components (JSON) and the recipe's noise schedule under ``<run>/param_outputs/``; at the end,
plots and a summary::

    param_outputs/
      weights/step_N.safetensors        gradients/step_N.safetensors      activations/step_N.safetensors
      noise_schedule/schedule.safetensors (diffusion recipes: Recipe.noise_schedule)
      loss_components/loss_step_N.json  statistics/{weight,gradient}_stats_step_N.json
      visualizations/*.png              summary_statistics.json

Activations are captured by forward hooks attached in ``trainhub_step_start`` only before a saving
step and removed after it, so other steps pay nothing. Past ``disk_budget_mb`` full tensors stop
(one warning) while statistics continue. Every file is written to a temporary name and renamed.

Read back with :func:`load`::

    from trainhub.observe import param_outputs
    out = param_outputs.load("runs/sr3/NAME", step=100)   # weights, gradients, activations, *_stats, losses
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainhub import hookimpl
from trainhub.loggers.configs import ParamOutputsConfig

KINDS: dict[str, tuple[type, ...]] = {
    "conv": (nn.modules.conv._ConvNd,),
    "linear": (nn.Linear, nn.Bilinear),
    "norm": (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
    "attention": (nn.MultiheadAttention,),
    "embedding": (nn.Embedding, nn.EmbeddingBag),
}
HIST_BINS = 40
STAT_KEYS = ("mean", "std", "min", "max", "norm", "frac_zeros", "nan_count", "inf_count")
_STEP = re.compile(r"step_(\d+)")


# ---- statistics ----------------------------------------------------------------------------------

def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP (DTensor) parameter, the tensor itself otherwise: the monitor runs
    on rank 0 alone, so it must never start a collective."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


@torch.no_grad()
def tensor_stats_many(tensors: dict[str, torch.Tensor], bins: int = HIST_BINS) -> dict[str, dict[str, Any]]:
    """Per tensor: mean, std, min, max, norm (over finite values), fraction of zeros, NaN/Inf counts,
    numel, and a histogram of the finite values. Computed on the tensors' device; one host transfer."""
    if not tensors:
        return {}
    rows, hists = [], []
    for t in tensors.values():
        t = local(t).detach().float().flatten()
        fin = torch.isfinite(t)
        n_fin = fin.sum()
        z = torch.where(fin, t, torch.zeros_like(t))
        cnt = n_fin.clamp(min=1).float()
        mean = z.sum() / cnt
        var = (torch.where(fin, t - mean, torch.zeros_like(t)) ** 2).sum() / (n_fin - 1).clamp(min=1).float()
        lo = torch.where(fin, t, torch.full_like(t, math.inf)).min() if t.numel() else torch.tensor(math.nan, device=t.device)
        hi = torch.where(fin, t, torch.full_like(t, -math.inf)).max() if t.numel() else torch.tensor(math.nan, device=t.device)
        rows.append(torch.stack([mean, var.sqrt(), lo, hi, z.norm(), (t == 0).sum().float() / max(1, t.numel()),
                                 torch.isnan(t).sum().float(), torch.isinf(t).sum().float(), n_fin.float()]))
        span = (hi - lo).clamp(min=1e-12)
        idx = ((z - lo) / span * bins).long().clamp(0, bins - 1)
        hists.append(torch.bincount(idx[fin], minlength=bins)[:bins])
    table = torch.stack(rows).cpu().tolist()
    counts = torch.stack(hists).cpu().tolist()
    out = {}
    for (name, t), row, hist in zip(tensors.items(), table, counts):
        finite_n = int(row[8])
        t = local(t)
        st: dict[str, Any] = {k: (float(v) if finite_n else math.nan) for k, v in zip(STAT_KEYS[:5], row[:5])}
        st.update(frac_zeros=row[5], nan_count=int(row[6]), inf_count=int(row[7]), numel=t.numel(), shape=list(t.shape),
                  hist={"min": st["min"], "max": st["max"], "counts": [int(c) for c in hist]})
        out[name] = st
    return out


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """:func:`tensor_stats_many` for one tensor."""
    return tensor_stats_many({"t": t})["t"]


# ---- layer selection -----------------------------------------------------------------------------

def _kind_match(mod: nn.Module, kind: str) -> bool:
    name = type(mod).__name__
    if kind == "all":
        return any(True for _ in mod.parameters(recurse=False))
    if kind == "attention":
        return isinstance(mod, KINDS["attention"]) or "attention" in name.lower() or name.lower().endswith("attn")
    if kind == "norm":
        return isinstance(mod, KINDS["norm"]) or name.endswith("Norm")
    return isinstance(mod, KINDS[kind])


def select_modules(models: dict[str, nn.Module], patterns: list[str]) -> dict[str, nn.Module]:
    """Modules matching a kind (``attention``, ``conv``, ``norm``, ``linear``, ``embedding``, ``all``)
    or a glob on ``<model>.<module path>``, keyed by that path."""
    kinds = [p for p in patterns if p in KINDS or p == "all"]
    globs = [p for p in patterns if p not in kinds]
    out = {}
    for mname, model in models.items():
        for path, mod in model.named_modules():
            key = f"{mname}.{path}" if path else mname
            if any(_kind_match(mod, k) for k in kinds) or any(fnmatch.fnmatchcase(key, g) for g in globs):
                out[key] = mod
    return out


def monitored_parameters(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """``<module key>.<param>`` -> parameter: a module's own parameters, or all of its subtree's when it
    has none of its own (a custom attention block made of Linear layers); each parameter once."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for key, mod in modules.items():
        own = list(mod.named_parameters(recurse=False))
        for n, p in own or list(mod.named_parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                out[f"{key}.{n}"] = p
    return out


# ---- atomic writes -------------------------------------------------------------------------------

def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    os.replace(tmp, path)


def _atomic_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: local(v).detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


def _step_of(path: Path) -> Optional[int]:
    m = _STEP.search(path.stem)
    return int(m.group(1)) if m else None


# ---- the monitor ---------------------------------------------------------------------------------

class ParamOutputs:
    def __init__(self, config: ParamOutputsConfig, run: Any) -> None:
        unknown = set(config.models) - set(run.models)
        if unknown:
            from trainhub.errors import UserError

            raise UserError(f"loggers.param_outputs.models: no model {sorted(unknown)}; this recipe builds {sorted(run.models)}")
        self.c = config
        self.root = Path(run.run_dir) / "param_outputs"
        for d in ("weights", "gradients", "activations", "noise_schedule", "loss_components", "statistics", "visualizations"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.modules: dict[str, nn.Module] = {}
        self.params: dict[str, nn.Parameter] = {}
        self.handles: list[Any] = []
        self.acts: dict[str, torch.Tensor] = {}
        self.bytes = sum(f.stat().st_size for f in self.root.rglob("*.safetensors"))
        self.over_budget = False
        self.capture_acts = config.save_activations and not run.config.train.compile  # hooks would force recompiles
        self.loss_history: dict[str, dict[int, float]] = {}  # term -> step -> value (logged windows and save steps)
        self.gradnorm_history: dict[str, dict[int, float]] = {}
        self.seconds = 0.0
        self.t0 = time.time()
        self.start_step = run.step
        self.saves = 0

    def _saving(self, step: int) -> bool:
        return step > 0 and step % self.c.save_param_freq == 0

    @hookimpl
    def trainhub_run_start(self, run: Any) -> None:
        models = {n: m for n, m in run.models.items() if not self.c.models or n in self.c.models}
        self.modules = select_modules(models, self.c.layers_to_monitor)
        self.params = monitored_parameters(self.modules)
        if not self.modules:
            warnings.warn(f"param_outputs: no module matches layers_to_monitor={self.c.layers_to_monitor}; only losses are saved",
                          stacklevel=2)
        if self.c.save_activations and not self.capture_acts:
            warnings.warn("param_outputs: activations are not captured with train.compile=true (hooks would recompile)", stacklevel=2)
        if run.resumed:
            self._reload_history(run.step)
        sched = run.recipe.noise_schedule(run.models)
        if sched:
            _atomic_safetensors(self.root / "noise_schedule" / "schedule.safetensors", sched)

    def _reload_history(self, upto: int) -> None:
        """After a resume, the curves and summary continue from what the earlier attempts wrote."""
        for f in (self.root / "loss_components").glob("loss_step_*.json"):
            step = _step_of(f)
            if step is not None and step <= upto:
                for k, v in json.loads(f.read_text()).items():
                    if k != "step" and isinstance(v, (int, float)):
                        self.loss_history.setdefault(k, {})[step] = float(v)
        for f in (self.root / "statistics").glob("gradient_stats_step_*.json"):
            step = _step_of(f)
            if step is not None and step <= upto:
                for k, s in json.loads(f.read_text()).items():
                    self.gradnorm_history.setdefault(k, {})[step] = s["norm"]
        summary = self.root / "summary_statistics.json"
        if summary.is_file():
            old = json.loads(summary.read_text())
            self.saves = sum(1 for s in old.get("save_steps", []) if s <= upto)
            self.seconds = old.get("timing", {}).get("seconds_in_param_outputs", 0.0)

    @hookimpl
    def trainhub_step_start(self, run: Any, step: int) -> None:
        if not self.capture_acts or self.over_budget or not self._saving(step + 1):
            return
        n = self.c.activation_samples
        for key, mod in self.modules.items():
            def hook(m: nn.Module, inputs: Any, output: Any, key: str = key) -> None:
                if key not in self.acts:  # the first call of the step (first micro-batch, first phase)
                    out = output[0] if isinstance(output, (tuple, list)) and output else output
                    if isinstance(out, torch.Tensor):
                        self.acts[key] = out.detach()[:n].float().cpu()

            self.handles.append(mod.register_forward_hook(hook))

    def _remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if metrics:  # logging step: window means of the loss terms, for the curves
            terms = run.last_losses or [k for k in metrics if k.startswith("loss")]
            for k in terms:
                if k in metrics:
                    self.loss_history.setdefault(k, {})[step] = float(metrics[k])
        if self._saving(step):
            t = time.perf_counter()
            try:
                self._save(run, step)
            finally:
                self._remove_hooks()
                self.acts = {}
            self.seconds += time.perf_counter() - t

    def _save(self, run: Any, step: int) -> None:
        weights = {k: p.detach() for k, p in self.params.items()}
        grads = {k: p.grad.detach() for k, p in self.params.items() if p.grad is not None}
        w_stats = tensor_stats_many(weights)
        g_stats = tensor_stats_many(grads)
        _atomic_json(self.root / "statistics" / f"weight_stats_step_{step}.json", w_stats)
        _atomic_json(self.root / "statistics" / f"gradient_stats_step_{step}.json", g_stats)
        source = getattr(run, "step_losses", None) or run.last_losses
        losses = {k: float(v) for k, v in source.items() if not k.startswith("grad_norm")}
        _atomic_json(self.root / "loss_components" / f"loss_step_{step}.json", {"step": step, **losses})
        for k, v in losses.items():
            self.loss_history.setdefault(k, {})[step] = v
        for k, s in g_stats.items():
            self.gradnorm_history.setdefault(k, {})[step] = s["norm"]
        if not self.over_budget:
            for sub, tensors, on in (("weights", weights, self.c.save_weights), ("gradients", grads, self.c.save_gradients),
                                     ("activations", self.acts, self.capture_acts)):
                if on and tensors:
                    self.bytes += _atomic_safetensors(self.root / sub / f"step_{step}.safetensors", tensors)
            if self.bytes > self.c.disk_budget_mb * 2**20:
                self.over_budget = True
                warnings.warn(f"param_outputs: {self.bytes / 2**20:.1f} MiB written, over loggers.param_outputs.disk_budget_mb="
                              f"{self.c.disk_budget_mb:g}; full tensors stop, statistics continue", stacklevel=2)
        self.saves += 1
        self._summary(run, "running")

    def _summary(self, run: Any, status: str) -> None:
        wall = time.time() - self.t0
        losses = {}
        for k, hist in self.loss_history.items():
            pts = sorted(hist.items())
            finite = [(s, v) for s, v in pts if math.isfinite(v)]
            if pts:
                best = min(finite, key=lambda sv: sv[1]) if finite else (pts[0][0], math.nan)
                losses[k] = {"first": pts[0][1], "first_step": pts[0][0], "final": pts[-1][1], "final_step": pts[-1][0],
                             "min": best[1], "min_step": best[0]}
        done = max(0, run.step - self.start_step)
        _atomic_json(self.root / "summary_statistics.json", {
            "total_steps": run.step,
            "status": status,
            "saves": self.saves,
            "save_steps": sorted({s for h in self.gradnorm_history.values() for s in h} |
                                 {_step_of(f) for f in (self.root / "loss_components").glob("loss_step_*.json")} - {None}),
            "save_param_freq": self.c.save_param_freq,
            "monitored_layers": sorted(self.modules),
            "monitored_parameters": len(self.params),
            "bytes_written": self.bytes,
            "over_budget": self.over_budget,
            "losses": losses,
            "timing": {"wall_seconds": wall, "steps_this_attempt": done,
                       "seconds_per_step": wall / done if done else None,
                       "seconds_in_param_outputs": self.seconds},
            # kept at the top level too (earlier readers)
            "seconds_in_param_outputs": self.seconds,
            "wall_seconds": wall,
        })

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        self._remove_hooks()
        self._summary(run, status)
        if self.c.plots and (self.saves or self.loss_history):
            try:
                plot_all(self.root, self.loss_history, self.gradnorm_history)
            except ImportError:
                warnings.warn("param_outputs: matplotlib is not installed; no plots (pip install trainhub[plots])", stacklevel=2)


# ---- plots (matplotlib object API: no pyplot, no global backend switch) -------------------------

def _save_fig(fig: Any, path: Path, tight: bool = True) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    if tight:
        fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def plot_all(root: Path, loss_history: dict[str, dict[int, float]], gradnorm_history: dict[str, dict[int, float]],
             per_page: int = 24) -> list[Path]:
    """Loss curves, gradient norm per layer over time, and weight/gradient distributions per monitored
    layer at the last saved step (from the histograms in the statistics files)."""
    from matplotlib.figure import Figure

    vis = root / "visualizations"
    written = []
    if loss_history:
        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
        positive = True
        for k, h in sorted(loss_history.items()):
            pts = sorted(h.items())
            positive &= all(v > 0 for _, v in pts)
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k, marker=".", ms=3)
        if positive:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title="loss components")
        ax.legend(fontsize=7)
        _save_fig(fig, vis / "loss_curves.png")
        written.append(vis / "loss_curves.png")
    if gradnorm_history:
        names = sorted(gradnorm_history)
        steps = sorted({s for h in gradnorm_history.values() for s in h})
        fig = Figure(figsize=(8, 4 if len(names) <= 20 else min(16, 2 + 0.15 * len(names))))
        ax = fig.add_subplot()
        if len(names) <= 20:
            for k in names:
                pts = sorted(gradnorm_history[k].items())
                ax.plot([s for s, _ in pts], [max(v, 1e-30) for _, v in pts], label=k, marker=".", ms=3)
            ax.set_yscale("log")
            ax.legend(fontsize=5)
            ax.set(xlabel="step", ylabel="gradient norm", title="gradient norm per layer")
        else:  # many layers: a heatmap of log10 norms, one row per parameter
            grid = [[math.log10(max(gradnorm_history[k].get(s, math.nan), 1e-30)) if s in gradnorm_history[k] else math.nan
                     for s in steps] for k in names]
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
            ax.set_yticks(range(len(names)), [n[-40:] for n in names], fontsize=4)
            ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=6, rotation=90)
            ax.set(xlabel="step", title="log10 gradient norm per parameter")
            fig.colorbar(im, ax=ax)
        _save_fig(fig, vis / "gradient_norms.png")
        written.append(vis / "gradient_norms.png")
    stats = sorted((root / "statistics").glob("weight_stats_step_*.json"), key=lambda p: _step_of(p) or 0)
    if stats:
        last = _step_of(stats[-1])
        for kind in ("weight", "gradient"):
            f = root / "statistics" / f"{kind}_stats_step_{last}.json"
            if f.is_file():
                written += _plot_distributions(json.loads(f.read_text()), vis, f"{kind}s_distributions_step_{last}", last, kind, per_page)
    return written


def _plot_distributions(stats: dict[str, Any], vis: Path, stem: str, step: Optional[int], kind: str, per_page: int) -> list[Path]:
    from matplotlib.figure import Figure

    names = list(stats)
    pages = [names[i:i + per_page] for i in range(0, len(names), per_page)]
    out = []
    for p, page in enumerate(pages, 1):
        cols = 4
        rows = (len(page) + cols - 1) // cols
        fig = Figure(figsize=(12, 2.2 * rows + 0.6))
        for i, name in enumerate(page):
            ax = fig.add_subplot(rows, cols, i + 1)
            h = stats[name]["hist"]
            counts = h["counts"]
            lo, hi = h["min"], h["max"]
            if counts and math.isfinite(lo) and math.isfinite(hi):
                if hi > lo:
                    width = (hi - lo) / len(counts)
                    ax.stairs(counts, [lo + j * width for j in range(len(counts) + 1)], fill=True)
                else:  # a constant tensor: one bar at its value
                    d = max(abs(lo) * 0.05, 1e-6)
                    ax.stairs([sum(counts)], [lo - d, lo + d], fill=True)
            ax.set_title(f"{name[-38:]}\nstd {stats[name]['std']:.3g}", fontsize=6)
            ax.tick_params(labelsize=5)
        suffix = f" (page {p}/{len(pages)})" if len(pages) > 1 else ""
        fig.suptitle(f"{kind} distributions at step {step}{suffix}", fontsize=9)
        fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08 / rows, top=1 - 0.6 / (2.2 * rows + 0.6), hspace=0.7, wspace=0.25)
        path = vis / (f"{stem}.png" if len(pages) == 1 else f"{stem}_p{p}.png")
        _save_fig(fig, path, tight=False)
        out.append(path)
    return out


# ---- reading -------------------------------------------------------------------------------------

def steps(run_dir: str | Path) -> list[int]:
    """Steps the monitor saved (from the statistics and loss files)."""
    root = Path(run_dir) / "param_outputs"
    found = {_step_of(f) for f in (root / "loss_components").glob("loss_step_*.json")}
    found |= {_step_of(f) for f in (root / "statistics").glob("*_stats_step_*.json")}
    return sorted(s for s in found if s is not None)


def load(run_dir: str | Path, step: Optional[int] = None) -> dict[str, Any]:
    """Everything the monitor wrote for ``step`` (default: the last saved): ``weights``, ``gradients``,
    ``activations`` (dicts of tensors, when written), ``weight_stats``, ``gradient_stats``, ``losses``
    (dicts) and ``noise_schedule`` (tensors, for diffusion recipes)."""
    from trainhub.errors import UserError

    root = Path(run_dir) / "param_outputs"
    if not root.is_dir():
        raise UserError(f"{run_dir}: no param_outputs/ (enable loggers.param_outputs.enabled=true)")
    if step is None:
        saved = steps(run_dir)
        if not saved:
            raise UserError(f"{run_dir}: param_outputs/ holds no saved step yet")
        step = saved[-1]
    out: dict[str, Any] = {}
    for sub in ("weights", "gradients", "activations"):
        f = root / sub / f"step_{step}.safetensors"
        if f.is_file():
            out[sub] = load_file(str(f))
    for key, f in (("weight_stats", root / "statistics" / f"weight_stats_step_{step}.json"),
                   ("gradient_stats", root / "statistics" / f"gradient_stats_step_{step}.json"),
                   ("losses", root / "loss_components" / f"loss_step_{step}.json")):
        if f.is_file():
            out[key] = json.loads(f.read_text())
    if not out:
        raise UserError(f"{run_dir}: nothing saved for step {step}; saved steps: {steps(run_dir) or 'none'}")
    sched = root / "noise_schedule" / "schedule.safetensors"
    if sched.is_file():
        out["noise_schedule"] = load_file(str(sched))
    return out
