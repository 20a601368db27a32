"""Console logging: a tqdm progress bar with loss and lr, and one line per eval and checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trainhub import hookimpl
from trainhub.loggers.configs import ConsoleConfig


class ConsoleLogger:
    def __init__(self, config: ConsoleConfig, run: Any) -> None:
        self.config = config
        self.bar: tqdm | None = None
        self.media: list[Path] = []  # the last eval's pictures and sounds, named in the last lines
        self.metrics: dict[str, float] = {}  # the last eval's
        self.best: str = ""

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    @hookimpl
    def trainhub_run_start(self, run: Any) -> None:
        verb = "resuming" if run.resumed else "starting"
        self._print(f"trainhub: {verb} {run.recipe.name} at step {run.step}/{run.max_steps} -> {run.run_dir}")
        if self.config.progress_bar:
            self.bar = tqdm(total=run.max_steps, initial=run.step, desc=run.recipe.name, unit="step", dynamic_ncols=True, file=sys.stderr)

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if metrics:
                post = {k: f"{metrics[k]:.4g}" for k in ("loss", "loss_g", "loss_d", "lr") if k in metrics}
                self.bar.set_postfix(post, refresh=False)
        elif metrics:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "grad_norm", "samples_per_sec"))
            self._print(f"step {step}: {shown}")

    @hookimpl
    def trainhub_eval_end(self, run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
        if not metrics and not media:
            return
        self.media, self.metrics = [m.path for m in media if m.path is not None], metrics
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "eval_time")
        took = f" ({metrics['eval_time']:.1f} s)" if "eval_time" in metrics else ""
        self._print(f"eval @ step {step}{took}: {shown}" + (f" ({len(media)} media files)" if media else ""))

    @hookimpl
    def trainhub_checkpoint_saved(self, run: Any, step: int, path: str, is_best: bool) -> None:
        self._print(f"checkpoint saved: {path}" + (" (best)" if is_best else ""))
        if is_best:
            metric = run.config.train.best_metric
            value = self.metrics.get(metric) if metric else None
            self.best = f"{path}" + (f" ({metric} {value:.4g})" if isinstance(value, float) else "")

    @hookimpl
    def trainhub_warning(self, run: Any, step: int, kind: str, message: str, data: dict[str, Any]) -> None:
        self._print(f"WARNING [{kind}] step {step}: {message}")

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._print(f"trainhub: run {status} at step {run.step}; outputs in {run.run_dir}")
        if status == "failed":
            return
        curves = run.run_dir / "curves.png"
        where = [("curves", str(curves) if curves.is_file() else ""),
                 ("samples", f"{self.media[0]}" + (f" (+{len(self.media) - 1} more)" if len(self.media) > 1 else "") if self.media else ""),
                 ("best", self.best)]
        for name, value in where:
            if value:
                self._print(f"  {name:<8} {value}")
        if status == "completed":
            self._print(f"  next     trainhub sample {run.recipe.name} --checkpoint {run.run_dir}   "
                        f"(or trainhub eval {run.recipe.name} --checkpoint {run.run_dir})")
