"""Weights & Biases logging (the real ``wandb`` library, imported lazily; ``pip install trainhub[wandb]``).

Rank 0 only (the trainer registers loggers there). Never stops training: without credentials, or
when the server cannot be reached, an ``online`` run falls back to ``offline`` with one warning, and
any later wandb error disables the logger for the rest of the run with one warning. The API key is
never written to configs or logs: the logged config is the resolved run config (which has no
credentials) with secret-looking keys masked, and the key itself is only ever read by wandb.

Files go to ``<run>/wandb/``. The wandb run id is the trainhub run id, stable across resumes, so a
resumed run continues the same wandb run; every record is logged at the trainer's optimizer step.
"""

from __future__ import annotations

import os
import platform
import re
import warnings
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from trainhub import hookimpl
from trainhub.loggers.configs import WandbConfig

SECRET = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.I)


def _err(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def has_credentials() -> bool:
    """An API key (env, netrc for the configured host) or an identity token file is configured."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    import netrc

    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def scrub(obj: Any, key: str = "") -> Any:
    """Mask values under secret-looking keys, and any string equal to the API key in the environment."""
    apikey = os.environ.get("WANDB_API_KEY")
    if isinstance(obj, dict):
        return {k: ("***" if SECRET.search(str(k)) and obj[k] not in (None, "") else scrub(v, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, key) for v in obj]
    if apikey and isinstance(obj, str) and apikey in obj:
        return obj.replace(apikey, "***")
    return obj


def system_info(run: Any) -> dict[str, Any]:
    import psutil
    import torch

    import trainhub

    cuda = run.device.type == "cuda"
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trainhub": trainhub.__version__,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "device": str(run.device),
        "gpu": torch.cuda.get_device_name(run.device) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cuda": torch.version.cuda if cuda else None,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "recipe": run.recipe.name,
        "run_dir": str(run.run_dir),
        "run_id": run.run_id,
        "resumed": run.resumed,
    }


class WandbLogger:
    def __init__(self, config: WandbConfig, run: Any) -> None:
        self.config = config
        self.run: Any = None
        self.failed = False
        self.min_step = 0  # wandb drops records below its step counter (an online run resumed behind the server)
        self.skip_warned = False
        self.media_warned: set[str] = set()
        self.eval_rows: list[list[Any]] = []
        self.eval_keys: list[str] = []
        self.last_checkpoint: Optional[str] = None
        self.mode = config.mode  # the mode in effect (online falls back to offline)

    def _guard(self, what: str, fn: Any) -> None:
        if self.failed or self.run is None:
            return
        try:
            fn()
        except Exception as exc:  # a logging backend must never stop training
            self.failed = True
            warnings.warn(f"wandb logger disabled after an error in {what}: {_err(exc)}", stacklevel=2)
            try:
                self.run.finish(exit_code=1)
            except Exception:
                pass

    def _log(self, data: dict[str, Any], step: int) -> None:
        if step < self.min_step:
            if not self.skip_warned:
                self.skip_warned = True
                warnings.warn(f"wandb: this run already holds steps up to {self.min_step - 1} (an earlier attempt logged past "
                              f"the checkpoint resumed from); records before step {self.min_step} are skipped", stacklevel=3)
            return
        self.run.log({"trainer/step": step, **data}, step=step)

    def _init(self, run: Any, mode: str) -> Any:
        import wandb

        c = self.config
        config = scrub(run.config.model_dump(mode="json"))
        config["system"] = system_info(run)
        settings = wandb.Settings(silent=True, init_timeout=c.init_timeout)
        return wandb.init(
            project=c.project, entity=c.entity, name=c.name or Path(run.run_dir).name, group=c.group, tags=c.tags or None,
            notes=c.notes, mode=mode, dir=str(run.run_dir), id=run.run_id, resume="allow", config=config, job_type="train",
            settings=settings, reinit="create_new",
        )

    @hookimpl
    def trainhub_run_start(self, run: Any) -> None:
        if not run.is_main:
            return
        mode = self.config.mode
        if mode == "online" and not has_credentials():
            warnings.warn("wandb: no API key (WANDB_API_KEY or `wandb login`); logging offline to the run directory "
                          "(upload later with `wandb sync`)", stacklevel=2)
            mode = self.mode = "offline"
        try:
            import wandb  # noqa: F401
        except ImportError:
            self.failed = True
            warnings.warn("wandb logger disabled: the wandb package is not installed (pip install 'trainhub[wandb]')", stacklevel=2)
            return
        try:
            self.run = self._init(run, mode)
        except Exception as exc:
            if mode != "online":
                self.failed = True
                warnings.warn(f"wandb logger disabled: could not start a run: {_err(exc)}", stacklevel=2)
                return
            warnings.warn(f"wandb: could not reach the server ({_err(exc)}); logging offline to the run "
                          "directory (upload later with `wandb sync`)", stacklevel=2)
            self.mode = "offline"
            try:
                import wandb

                if wandb.run is None:
                    wandb.teardown()  # the failed attempt still holds this run id in wandb's service
                self.run = self._init(run, "offline")
            except Exception as exc2:
                self.failed = True
                warnings.warn(f"wandb logger disabled: could not start a run: {_err(exc2)}", stacklevel=2)
                return

        def setup() -> None:
            self.min_step = int(getattr(self.run, "step", 0) or 0)
            self.run.define_metric("trainer/step")
            self.run.define_metric("*", step_metric="trainer/step", step_sync=False)

        self._guard("setup", setup)

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self._guard("log", lambda: self._log({f"train/{k}": v for k, v in metrics.items()}, step))

    @hookimpl
    def trainhub_eval_end(self, run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
        def log() -> None:
            import wandb

            data: dict[str, Any] = {f"eval/{k}": v for k, v in metrics.items()}
            items = []
            for m in media if self.config.log_media else []:
                try:
                    if m.kind == "image":
                        obj = wandb.Image(m.data, caption=m.caption or m.name)
                    elif m.kind == "audio":
                        wave = m.data if m.data.ndim == 1 else m.data.T  # channels x samples -> samples x channels
                        obj = wandb.Audio(wave, sample_rate=m.sample_rate, caption=m.caption or m.name)
                    else:
                        continue
                except Exception as exc:  # one media item wandb cannot encode is skipped, not the logger
                    if m.kind not in self.media_warned:
                        self.media_warned.add(m.kind)
                        warnings.warn(f"wandb: {m.kind} media not logged ({m.name}): {_err(exc)}", stacklevel=2)
                    continue
                data[f"media/{m.name}"] = obj
                items.append((m, obj))
            if self.config.log_eval:
                if metrics:
                    self.eval_keys = self.eval_keys or sorted(metrics)
                    self.eval_rows.append([step] + [metrics.get(k) for k in self.eval_keys])
                    data["eval/table"] = wandb.Table(columns=["step"] + self.eval_keys, data=self.eval_rows)
                if items:
                    data["eval/samples"] = wandb.Table(
                        columns=["step", "name", "image", "audio", "caption"],
                        data=[[step, m.name, obj if m.kind == "image" else None, obj if m.kind == "audio" else None, m.caption]
                              for m, obj in items])
            self._log(data, step)

        self._guard("eval", log)

    def _upload(self, run: Any, path: str, step: int, aliases: list[str]) -> None:
        if self.mode == "disabled":
            return
        import wandb

        meta = {"step": step, "recipe": run.recipe.name, "run_id": run.run_id}
        best = Path(run.run_dir) / "best.json"
        if "best" in aliases and best.is_file():
            import json

            meta.update({k: v for k, v in json.loads(best.read_text()).items() if k in ("metric", "value")})
        art = wandb.Artifact(f"{run.recipe.name}-{run.run_id}", type="model", metadata=meta)
        art.add_dir(path)
        self.run.log_artifact(art, aliases=aliases + [f"step-{step}"])

    @hookimpl
    def trainhub_checkpoint_saved(self, run: Any, step: int, path: str, is_best: bool) -> None:
        self.last_checkpoint = path
        if self.config.log_checkpoints and is_best:
            self._guard("checkpoint artifact", lambda: self._upload(run, path, step, ["best"]))

    @hookimpl
    def trainhub_warning(self, run: Any, step: int, kind: str, message: str, data: dict[str, Any]) -> None:
        def alert() -> None:
            if self.mode == "online":
                self.run.alert(title=f"trainhub {kind}", text=message, level="WARN")
            self.run.summary[f"warnings/{kind}"] = message

        self._guard("warning", alert)

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        def finish() -> None:
            if self.config.log_checkpoints and not run.config.train.best_metric and self.last_checkpoint and status == "completed":
                self._upload(run, self.last_checkpoint, run.step, ["latest"])
            self.run.summary["trainhub/status"] = status
            if status == "interrupted":
                self.run.mark_preempting()  # shown as preempted: resumable
            self.run.finish(exit_code=1 if status == "failed" else 0)
            import wandb

            if wandb.run is None:
                # finish() can return before wandb's service has written the run file (seen with 0.31: an offline
                # .wandb file still empty); shutting the idle service down waits for it to flush
                wandb.teardown()

        self._guard("finish", finish)
        self.run = None
