"""Console logging: a tqdm progress bar with loss and lr, and one line per eval and checkpoint."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

from trainhub import hookimpl
from trainhub.loggers.configs import ConsoleConfig


class ConsoleLogger:
    def __init__(self, config: ConsoleConfig, run: Any) -> None:
        self.config = config
        self.bar: tqdm | None = None

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
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self._print(f"eval @ step {step}: {shown}" + (f" ({len(media)} media files)" if media else ""))

    @hookimpl
    def trainhub_checkpoint_saved(self, run: Any, step: int, path: str, is_best: bool) -> None:
        self._print(f"checkpoint saved: {path}" + (" (best)" if is_best else ""))

    @hookimpl
    def trainhub_warning(self, run: Any, step: int, kind: str, message: str, data: dict[str, Any]) -> None:
        self._print(f"WARNING [{kind}] step {step}: {message}")

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._print(f"trainhub: run {status} at step {run.step}; outputs in {run.run_dir}")
