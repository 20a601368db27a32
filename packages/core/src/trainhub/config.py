"""Typed run configuration: schema (pydantic), sources, overrides and one-line errors.

Sources, later wins: recipe defaults < ``--config FILE`` (YAML, or JSON with ``//`` comments)
< dotted command-line overrides (``train.lr=2e-4`` or ``--train.lr 2e-4``).
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from trainhub.errors import ConfigError


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated, and a float is
    finite (``.inf`` or ``.nan`` in a float key, say ``train.lr``, is an error naming the key: an infinite lr
    turns the weights into NaN on the first step)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class EMAConfig(Section):
    enabled: bool = Field(True, description="keep an exponential moving average of the weights (eval and sampling use it)")
    decay: float = Field(0.999, ge=0.0, le=1.0, description="ema = decay * ema + (1 - decay) * weights, every `every` steps")
    start_step: int = Field(0, ge=0, description="optimizer step at which EMA starts (before: copy weights)")
    every: int = Field(1, ge=1, description="update EMA every N optimizer steps")


class DistillConfig(Section):
    """Knowledge distillation from a trained teacher of the same recipe (:mod:`trainhub.kit.distill`): a recipe that
    supports it adds a ``distill`` section of this type."""

    teacher: Optional[str] = Field(None, description="teacher checkpoint or run directory (its best checkpoint; RUN:last, "
                                   "RUN:STEP choose); same recipe, any config")
    teacher_overrides: list[str] = Field(default_factory=list, description="overrides of the teacher's saved config")
    output_weight: float = Field(1.0, ge=0.0, description="weight of the student-teacher output loss")
    feature_weight: float = Field(0.0, ge=0.0, description="weight of intermediate-feature losses, where exposed")
    use_ema: bool = Field(True, description="load the teacher's EMA weights")
    init_from_teacher: bool = Field(False, description="start the student from the teacher's weights (a spread subset of "
                                    "its layers where the student is shallower; recipes that support it; needs teacher)")


class DataPhase(Section):
    """From epoch ``from_epoch`` on, train with these ``data`` settings (and optionally batch size)."""

    from_epoch: int = Field(..., ge=0)
    data: dict[str, Any] = Field(default_factory=dict, description="overrides of the data section, e.g. {crop_size: 256}")
    batch_size: Optional[int] = Field(None, ge=1)


class TrainConfig(Section):
    max_steps: int = Field(1000, ge=1, description="optimizer steps (ignored when epochs is set)")
    epochs: Optional[int] = Field(None, ge=1, description="train for this many epochs instead of max_steps")
    batch_size: Union[int, Literal["auto"]] = Field(8, description="per-device micro-batch size (>= 1), or auto (largest that fits)")
    global_batch_size: Optional[int] = Field(None, ge=1, description="with batch_size auto: set accumulation to reach it")
    auto_batch_max: int = Field(1024, ge=1, description="with batch_size auto: the largest batch tried")
    auto_batch_margin: float = Field(0.05, ge=0.0, lt=1.0, description="fraction taken off the largest fitting batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    optimizer: str = Field("adamw", description="a registered optimizer: adamw, adam, sgd, or a plugin's (trainhub plugins "
                           "lists them)")
    optimizer_args: dict[str, Any] = Field(default_factory=dict, description="the optimizer's other keyword arguments, "
                                           "e.g. {momentum: 0.9, nesterov: true} for sgd")
    lr: float = Field(1e-4, gt=0.0, description="the base learning rate (the schedule multiplies it)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW moment decays")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled for adamw, added to the gradient for adam and sgd")
    eps: float = Field(1e-8, gt=0.0, description="Adam/AdamW denominator epsilon")
    fused: Optional[bool] = Field(None, description="fused AdamW kernel; null = on for CUDA")
    schedule: str = Field("constant", description="a registered lr schedule: constant, cosine, linear (each after "
                          "warmup_steps), or a plugin's")
    schedule_args: dict[str, Any] = Field(default_factory=dict, description="the schedule's other keyword arguments")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear lr warm-up")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine and linear decay end at lr x this")
    max_grad_norm: Optional[float] = Field(1.0, gt=0.0, description="clip after unscale; null = no clipping")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="autocast dtype; auto: bf16 on CUDA "
                                                              "(fp16 + grad scaler where bf16 is missing), fp32 elsewhere")
    fp16_init_scale: float = Field(65536.0, gt=0.0, description="the fp16 grad scaler's first scale")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA, then MPS, then CPU")
    cpu_threads: Union[int, Literal["auto"]] = Field("auto", description="torch threads when training on the CPU; auto: "
                                                     "this process's share of the cores less its loader workers "
                                                     "(OMP_NUM_THREADS, when set, wins)")
    seed: int = Field(0, description="seeds model init, data order, augmentation and noise (exact resume keeps them)")
    deterministic: bool = Field(False, description="deterministic kernels (slower on CUDA): bit-identical runs on one machine")
    ema: EMAConfig = EMAConfig()
    eval_every: int = Field(0, ge=0, description="optimizer steps between evals; 0 = only at the end")
    eval_at_end: bool = Field(True, description="evaluate when the run completes")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints; 0 = only at the end")
    checkpoint_every_epoch: bool = Field(False, description="also save checkpoint-epoch-N at every epoch end")
    checkpoint_at_end: bool = Field(True, description="save when the run completes; false with checkpoint_every 0: no "
                                    "checkpoint at all (benchmarks, sweeps). An interrupted run always saves")
    keep_last: int = Field(3, ge=1, description="checkpoints kept (the best and the newest good one are never pruned)")
    best_metric: Optional[str] = Field(None, description="an eval metric: its best checkpoint is kept and named in best.json "
                                       "(sample and eval --checkpoint RUN use it)")
    best_mode: Literal["min", "max"] = Field("min", description="lower or higher best_metric is better")
    log_every: int = Field(10, ge=1, description="optimizer steps between logged metrics (the only host sync besides the finite check)")
    max_nonfinite: int = Field(5, ge=1, description="consecutive non-finite steps before the run stops")
    data_schedule: list[DataPhase] = Field(
        default_factory=list, description="progressive resizing: data settings per epoch range, applied at epoch boundaries"
    )
    compile: bool = Field(False, description="torch.compile the models (CUDA; the first steps compile)")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in backward (Recipe.blocks)")
    channels_last: bool = Field(False, description="channels-last memory format for conv nets (faster convolutions on CUDA)")
    measure_flops: bool = Field(True, description="count the FLOPs of the first optimizer step as it runs; logs tflops "
                                "and, on CUDA, mfu (not with train.compile: a compiled model runs eagerly while counted)")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp, or fsdp (FSDP2 fully_shard per block; for large models)")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            n = int(v) if not isinstance(v, (bool, float)) else None
        except (TypeError, ValueError):
            n = None
        if n is None or n < 1:
            raise ValueError("must be a whole number >= 1, or auto")
        return n


class LoaderConfig(Section):
    num_workers: Union[int, Literal["auto"]] = Field("auto", description="DataLoader worker processes; auto: CPUs per "
                                                     "process - 1, at most 8")
    pin_memory: Optional[bool] = Field(None, description="null = on when training on CUDA")
    persistent_workers: bool = Field(True, description="keep workers alive between epochs")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker loads ahead")
    drop_last: bool = Field(True, description="drop an epoch's incomplete last batch")
    shuffle: bool = Field(True, description="a new order every epoch (from the seed and the epoch)")
    group_window: Optional[int] = Field(
        None, ge=1, description="keep samples of a group (a dataset's sample_groups, e.g. video sequences) together in windows of N"
    )
    sampler: str = Field("auto", description="a registered training sampler: random, grouped (sample_groups in windows of "
                         "group_window), or a plugin's; auto: grouped when group_window is set and the data has groups")
    sampler_args: dict[str, Any] = Field(default_factory=dict, description="the sampler's other keyword arguments")


class RunConfig(Section):
    """The top level shared by every recipe; recipes subclass it and type ``model`` and ``data``."""

    run_name: Optional[str] = Field(None, description="run folder name; default: a timestamp")
    output_dir: str = Field("runs", description="runs are written to <output_dir>/<recipe>/<run_name>")
    plugin_errors: Literal["stop", "disable"] = Field(
        "stop", description="a plugin raising in a lifecycle hook stops the run, or is disabled for the rest of it"
    )
    model: Section = Section()
    data: Section = Section()
    train: TrainConfig = TrainConfig()
    loader: LoaderConfig = LoaderConfig()


# ---- reading sources ---------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` and ``1e4`` as floats (YAML 1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def strip_json_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside strings (the SR3 config style)."""
    out, i, n, in_str = [], 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON(-with-comments) config file into a dict; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        kind = "a binary file, not a config" if b"\0" in raw else "not UTF-8 text"
        raise ConfigError(f"{p}: {kind} (byte 0x{raw[e.start]:02x} at line {line}); a config is YAML or JSON saved as UTF-8") from None
    if "\0" in text:
        raise ConfigError(f"{p}: a binary file, not a config (a NUL byte at line {text[: text.index(chr(0))].count(chr(10)) + 1}); "
                          f"a config is YAML or JSON saved as UTF-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(strip_json_comments(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    else:
        try:
            data = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{p}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, bools, null, lists)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["train.lr=2e-4", "--data.root", "./x"]`` -> nested dict."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" not in a:
            if i + 1 >= len(args):
                raise ConfigError(f"override {a} needs a value: {a} VALUE or {a[2:]}=VALUE")
            key, value = a[2:], args[i + 1]
            i += 2
        elif "=" in a:
            key, value = a.lstrip("-").split("=", 1)
            i += 1
        else:
            raise ConfigError(f"cannot read argument {a!r}: overrides look like key.path=value")
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(f"invalid override key {key!r}: use dotted names such as train.lr")
        set_path(out, key, parse_value(value))
    return out


def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---- validation --------------------------------------------------------------------------------

def with_loggers(config_class: type[RunConfig], loggers: dict[str, type[BaseModel]]) -> type[RunConfig]:
    """Add a ``loggers`` section holding one sub-section per registered logger."""
    if not loggers:
        return config_class
    fields = {name: (cls, cls()) for name, cls in sorted(loggers.items())}
    loggers_model = create_model("LoggersConfig", __base__=Section, **fields)  # type: ignore[call-overload]
    return create_model(  # type: ignore[call-overload]
        config_class.__name__, __base__=config_class, loggers=(loggers_model, loggers_model())
    )


def validate(config_class: type[RunConfig], data: dict[str, Any]) -> RunConfig:
    try:
        return config_class.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, config_class)) from None


def format_validation_error(e: ValidationError, root: type[BaseModel]) -> str:
    msgs = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" (did you mean {'.'.join(loc[:-1] + close)!r}?)" if close else ""
            msgs.append(f"unknown key {path!r}{hint}; allowed here: {', '.join(allowed)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if not loc:  # a whole-config validator: its message names the keys itself
                msgs.append(msg)
                continue
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            msgs.append(f"{path}: {msg} (got {shown})")
    return "invalid config: " + "; ".join(msgs)


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def resolve(
    config_class: type[RunConfig],
    file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    file_mapper: Any = None,
) -> RunConfig:
    """Defaults < file < overrides, validated. ``file_mapper(dict, path)`` converts foreign layouts."""
    data = config_class().model_dump(mode="json")
    if file:
        raw = load_file(file)
        if file_mapper is not None:
            raw = file_mapper(raw, Path(file))
        data = deep_merge(data, raw)
    if overrides:
        ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data = deep_merge(data, ov)
    return validate(config_class, data)


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def json_schema(config_class: type[BaseModel]) -> str:
    return json.dumps(config_class.model_json_schema(), indent=2)


def _type_name(annotation: Any) -> str:
    """``int``, ``str | null``, ``one of: ddim, ancestral``, ``list[int]``: the type as a user writes a value."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(names) + (" | null" if type(None) in args else "")
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def describe_keys(config: BaseModel, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key.path, type, default, description)`` for every leaf key of ``config`` (its values as the defaults)."""
    rows = []
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            rows += describe_keys(value, key + ".")
            continue
        shown = json.dumps(value) if not isinstance(value, str) else value
        rows.append((key, _type_name(field.annotation), shown, " ".join((field.description or "").split())))
    return rows


def commented_yaml(config: BaseModel) -> str:
    """YAML like :func:`to_yaml`, each key preceded by its description as a comment (``trainhub config NAME``)."""
    lines: list[str] = []

    def emit(model: BaseModel, indent: str) -> None:
        plain = model.model_dump(mode="json")
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if field.description:
                lines.extend(f"{indent}# {line}" for line in _wrap(" ".join(field.description.split()), 110 - len(indent)))
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:")
                emit(value, indent + "  ")
            else:
                dumped = yaml.safe_dump(plain[name], default_flow_style=True, width=10**6)
                lines.append(f"{indent}{name}: {dumped.removesuffix(chr(10)).removesuffix('...').strip()}")

    emit(config, "")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, max(40, width)) or [""]
