"""TensorBoard event files (``torch.utils.tensorboard``): scalars, eval images and audio, the resolved
config as text, and weight/gradient histograms when asked. Needs the ``tensorboard`` extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainhub import hookimpl
from trainhub.loggers.configs import TensorBoardConfig
from trainhub.observe.param_outputs import local


class TensorBoardLogger:
    def __init__(self, config: TensorBoardConfig, run: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is an optional extra
            from trainhub.errors import UserError

            raise UserError("loggers.tensorboard.enabled=true needs the tensorboard package: pip install 'trainhub[tensorboard]'") from e
        self.config = config
        self.log_dir = Path(config.log_dir) if config.log_dir else run.run_dir / "tensorboard"
        # on resume, drop events a crashed attempt wrote after the checkpoint we continue from
        self.writer = SummaryWriter(str(self.log_dir), purge_step=run.step + 1 if run.resumed else None, flush_secs=config.flush_secs)

    @hookimpl
    def trainhub_run_start(self, run: Any) -> None:
        if not run.resumed:
            import yaml

            text = yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "\n```", global_step=run.step)

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        if self.config.histograms and step % self.config.histogram_every == 0:
            self._histograms(run, step)

    def _histograms(self, run: Any, step: int) -> None:
        for mname, model in run.models.items():
            for pname, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                tag = f"{mname}.{pname}"  # FSDP: this rank's shard (loggers run on rank 0 only: no collectives)
                self.writer.add_histogram(f"weights/{tag}", local(p).detach().float().cpu(), step)
                if p.grad is not None:
                    self.writer.add_histogram(f"gradients/{tag}", local(p.grad).detach().float().cpu(), step)

    @hookimpl
    def trainhub_eval_end(self, run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"eval/{k}", v, step)
        if not self.config.log_media:
            return
        for m in media:
            if m.kind == "image":
                img = m.data if m.data.ndim == 3 else m.data[..., None]
                self.writer.add_image(f"media/{m.name}", img, step, dataformats="HWC")
            elif m.kind == "audio":
                wave = np.asarray(m.data, dtype=np.float32)
                if wave.ndim > 1:
                    wave = wave.mean(axis=0)  # channels x samples -> mono
                self.writer.add_audio(f"media/{m.name}", torch.from_numpy(np.clip(wave, -1, 1))[None], step, sample_rate=m.sample_rate)
        self.writer.flush()

    @hookimpl
    def trainhub_checkpoint_saved(self, run: Any, step: int, path: str, is_best: bool) -> None:
        if is_best:
            self.writer.add_text("best_checkpoint", path, step)

    @hookimpl
    def trainhub_warning(self, run: Any, step: int, kind: str, message: str, data: dict[str, Any]) -> None:
        self.writer.add_text(f"warnings/{kind}", message, step)

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        self.writer.close()
