"""The ``trainhub`` command line. User mistakes print one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from trainhub.errors import TrainingStopped, UserError

EPILOG = """examples:
  trainhub list                                   recipes you can run
  trainhub runs                                   past and running runs, newest first
  trainhub run sr3                                train on the embedded default data
  trainhub run sr3 --config cfg.yaml train.lr=2e-4 --data.root ./images
  trainhub run sr3 --resume auto                  continue the newest run
  trainhub run dit --nproc-per-node 4             DDP on 4 GPUs (hands over to torchrun)
  trainhub sample sr3 --checkpoint runs/sr3/NAME --input lr.png
  trainhub config sr3 > cfg.yaml                  defaults as YAML (--schema: JSON schema)
"""


RUN_DESCRIPTION = ("Train a recipe. Extra arguments are config overrides: key.path=value or --key.path value (later wins: "
                   "defaults < --config < overrides).")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML, or JSON with // comments; or the name of a config the recipe ships "
                   "(trainhub config RECIPE --list shows them)")
    p.add_argument("--resume", help="auto (latest checkpoint of the run, fresh start if none) or a checkpoint/run directory")
    p.add_argument("--run-dir", help="run directory (default: <output_dir>/<recipe>/<run_name or timestamp>)")
    p.add_argument("--dry-run", action="store_true", help="validate config, build model and data, run one step, write nothing")
    p.add_argument("--nproc-per-node", type=int, help="processes per node: hands over to torch.distributed.run (torchrun)")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes (with --nproc-per-node)")
    p.add_argument("--node-rank", type=int, default=0, help="this node's rank (with --nnodes > 1)")
    p.add_argument("--rdzv-endpoint", help="HOST:PORT of the rendezvous (with --nnodes > 1)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainhub", description="Train image, video and audio generative models with plugins.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="train a recipe", description=RUN_DESCRIPTION + " trainhub run RECIPE --help lists the "
                       "recipe's config keys.")
    r.add_argument("recipe", help="recipe name (see `trainhub list`)")
    _run_options(r)

    sub.add_parser("list", help="list recipes")
    rs = sub.add_parser("runs", help="past and running runs: state, step, best metric, path (newest first)")
    rs.add_argument("recipe", nargs="?", help="only this recipe's runs")
    rs.add_argument("--dir", default="runs", help="the output_dir the runs were written to (default: runs)")
    sub.add_parser("plugins", help="list plugins, their distributions, versions and what each registered")

    c = sub.add_parser("config", help="print a recipe's default config as YAML")
    c.add_argument("recipe")
    c.add_argument("--schema", action="store_true", help="print the JSON schema instead")
    c.add_argument("--list", action="store_true", help="list the named configs the recipe ships (for run --config NAME)")
    c.add_argument("--name", help="print this shipped config merged onto the defaults")

    d = sub.add_parser("doctor", help="check torch, devices, memory, disk and plugins")
    d.add_argument("--dataset", help="a dataset folder: its size against memory")
    d.add_argument("--cache-gb", type=float, default=0.0, help="a per-process RAM cache size to check")
    d.add_argument("--num-workers", type=int, help="loader workers to plan for (default: auto)")

    s = sub.add_parser("sample", help="generate with a trained checkpoint (EMA weights by default)", add_help=False)
    s.add_argument("recipe")
    e = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's validation data", add_help=False)
    e.add_argument("recipe")

    pr = sub.add_parser("prepare", help="prepare a recipe's dataset (recipe-specific arguments)", add_help=False)
    pr.add_argument("recipe")
    a = sub.add_parser("analyze", help="performance report of a run directory", add_help=False)
    a.add_argument("run_dir", nargs="?")
    x = sub.add_parser("export", help="write one model of a checkpoint (plain or FSDP-sharded) as a single safetensors file")
    x.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory: its best checkpoint (the last where it keeps no best); RUN:last, RUN:best or RUN:STEP choose")
    x.add_argument("--model", default="model", help="model name in the checkpoint (default: model)")
    x.add_argument("--ema", action="store_true", help="export the EMA weights")
    x.add_argument("--out", required=True, help="output .safetensors file")
    n = sub.add_parser("new", help="scaffold a new plugin package: trainhub new plugin NAME [--dir D]", add_help=False)
    n.add_argument("what", nargs="?")
    return p


def error_line(e: BaseException) -> str:
    """The user error's own message, also when a DataLoader worker re-raised it wrapped in its traceback."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return msg


def main(argv: Optional[list[str]] = None) -> int:
    try:
        code = _guarded_main(list(sys.argv[1:] if argv is None else argv))
    except BaseException as e:
        if not _joined_process_group():
            raise
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else 1
        else:
            traceback.print_exc()
            code = 1
    if _joined_process_group():  # a torchrun worker ends without the interpreter's teardown: see end_process
        sys.modules["trainhub.training.distributed"].end_process(code)
    return code


def _joined_process_group() -> bool:
    dist = sys.modules.get("trainhub.training.distributed")
    return dist is not None and dist.joined()


def _guarded_main(argv: list[str]) -> int:
    from trainhub.training.signals import Interrupted

    try:
        return _main(argv)
    except BrokenPipeError:  # ``trainhub config sr3 | head``: the reader is gone, so is the rest of the output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingStopped as e:
        print(f"trainhub: stopped: {e}", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"trainhub: error: {error_line(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:  # SIGINT/SIGTERM before the first step: nothing to save, as asked
        print(f"trainhub: {e.signame} during start-up: stopped before the first step, nothing to save", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("trainhub: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full or read-only disk wherever it shows up (recipes' and plugins' own files too)
        from trainhub.training.storage import explain

        reason = explain(e, Path(e.filename or "."))
        if reason is None:
            raise
        print(f"trainhub: error: cannot write {e.filename or 'a file'}: {reason}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    parser = _parser()
    known = {"run", "list", "runs", "plugins", "config", "doctor", "sample", "eval", "prepare", "analyze", "new", "export"}
    if argv and not argv[0].startswith("-") and argv[0] not in known:
        return _recipe_command(argv[0], argv[1:], parser)
    names = [a for a in argv[1:] if not a.startswith("-")]
    if argv[:1] == ["run"] and names and {"-h", "--help"} & set(argv):
        return _run_help(parser, names[0])
    args, rest = parser.parse_known_args(argv)
    if args.version:
        from trainhub import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("sample", "eval", "prepare", "analyze", "new"):
        rest = argv[argv.index(args.command) + 1 :]
    elif rest and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return globals()[f"cmd_{args.command}"](args, rest)


def _run_help(parser: argparse.ArgumentParser, recipe: str) -> int:
    """``trainhub run NAME --help``: the run options, then every config key of the recipe with its type, default and
    description (from the config schema; no recipe module, no torch)."""
    from trainhub import config as C
    from trainhub.plugins import get_plugins
    from trainhub.resolve import config_class_for

    plugins = get_plugins()
    entry = plugins.recipe_entry(recipe)
    run_parser = argparse.ArgumentParser(prog=f"trainhub run {recipe}", usage=f"trainhub run {recipe} [options] [key=value ...]",
                                         description=RUN_DESCRIPTION)
    _run_options(run_parser)
    print(run_parser.format_help())
    rows = C.describe_keys(config_class_for(entry, plugins)())
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in ((0, 44), (1, 28), (2, 24))]
    print(f"{recipe} ({plugins.registry['recipes'][recipe].distribution}): {entry.description}")
    print("config keys: key=value or --key value on the command line, or in a --config file (trainhub config "
          f"{recipe} writes them all as YAML)\n")
    for key, typ, default, desc in rows:
        cells = [key.ljust(widths[0]), typ[: widths[1]].ljust(widths[1]), default[: widths[2]].ljust(widths[2])]
        print(("  " + "  ".join(cells) + "  " + desc).rstrip())
    return 0


def _recipe_command(name: str, args: list[str], parser: argparse.ArgumentParser) -> int:
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    if name not in plugins.registry["recipes"]:
        parser.print_usage(sys.stderr)
        raise UserError(f"unknown command or recipe {name!r}; commands: run, list, runs, plugins, config, doctor, sample, eval, "
                        f"prepare, analyze, new; recipes: {', '.join(sorted(plugins.registry['recipes'])) or 'none'}")
    try:
        plugins.recipe(name).command(args)
    except NotImplementedError as e:
        raise UserError(str(e)) from None
    return 0


# ---- commands ------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.nproc_per_node:
        return _launch_torchrun(args)
    from trainhub.training import signals

    stop: Optional[signals.StopSignals] = None
    try:
        with signals.installed() as stop:  # before the slow imports: Ctrl-C during start-up is one line and exit 0
            from trainhub.training.run import main_entry

            return main_entry(args.recipe, config_file=args.config, overrides=overrides, run_dir=args.run_dir,
                              resume=args.resume, dry_run=args.dry_run)
    finally:
        if stop is not None and stop.requested is not None:  # answered a signal: exiting now
            signals.ignore_until_exit()


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this command under torch.distributed.run with the launch flags removed."""
    from torch.distributed import run as torchrun

    argv = sys.argv[1:]
    flags = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint"}
    inner: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.split("=", 1)[0] in flags:
            i += 1 if "=" in a else 2
            continue
        inner.append(a)
        i += 1
    launch = [f"--nproc-per-node={args.nproc_per_node}", f"--nnodes={args.nnodes}"]
    if args.nnodes > 1:
        if not args.rdzv_endpoint:
            raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        launch += [f"--node-rank={args.node_rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}"]
    else:
        launch += ["--standalone"]
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        torchrun.main(launch + ["-m", "trainhub"] + inner)
    except SignalException as e:
        # torchrun forwarded the signal to every worker and waited for them: each saved a checkpoint and exited
        print(f"trainhub: launcher got signal {e.sigval}; workers saved their checkpoint (resume with --resume auto)", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.observe.runs import find_runs, table

    if not Path(args.dir).is_dir():
        print(f"no runs under {args.dir} yet (runs are written to <output_dir>/<recipe>/<run>; --dir names another output_dir)")
        return 0
    print(table(find_runs(Path(args.dir), args.recipe)))
    return 0


def cmd_list(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    for name, reg in sorted(plugins.registry["recipes"].items()):
        print(f"{name:<14} {reg.distribution:<22} {reg.obj.description}")
    for name, err in sorted(plugins.failed.items()):
        print(f"{name:<14} FAILED: {err}")
    return 0


def cmd_plugins(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    for name, info in sorted(plugins.info.items()):
        print(f"{name}  ({info.distribution} {info.version})  {info.module}")
        for kind, names in sorted(info.registered.items()):
            print(f"    {kind}: {', '.join(names)}")
    for name, err in sorted(plugins.failed.items()):
        print(f"{name}  FAILED to load: {err}")
    return 0


def cmd_config(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub import config as C
    from trainhub.plugins import get_plugins
    from trainhub.resolve import config_class_for, resolve_config, shipped_configs

    plugins = get_plugins()
    entry = plugins.recipe_entry(args.recipe)  # the config class alone: no recipe module, no torch
    if args.list:
        for name, path in shipped_configs(entry).items():
            print(f"{name:<20} {path}")
        return 0
    if args.name:  # a shipped file may be a foreign layout that the recipe maps
        print(C.to_yaml(resolve_config(plugins.recipe(args.recipe), plugins, args.name)), end="")
        return 0
    cls = config_class_for(entry, plugins)
    print(C.json_schema(cls) if args.schema else C.commented_yaml(cls()), end="" if not args.schema else "\n")
    return 0


def cmd_doctor(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.observe.doctor import report

    lines, ok = report(args.dataset, args.cache_gb, args.num_workers)
    print("\n".join(lines))
    return 0 if ok else 1


def _load_for_inference(command: str, recipe_name: str, checkpoint: str, ema: bool, overrides: list[str]) -> tuple[Any, Any, dict, Path]:
    from trainhub.config import DistillConfig
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config
    from trainhub.training import checkpoint as ckpt

    plugins = get_plugins()
    recipe = plugins.recipe(recipe_name)
    path = ckpt.resolve_checkpoint(checkpoint, default="best")
    ckpt.check_recipe(path, recipe.name, f"use trainhub {command} {{recipe}} --checkpoint {checkpoint}")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    cfg_file = run_dir / "config.yaml"
    config = resolve_config(recipe, plugins, cfg_file if cfg_file.is_file() else None, overrides)
    distill = getattr(config, "distill", None)
    if isinstance(distill, DistillConfig) and distill.teacher:  # a student samples and evaluates without its teacher
        config = config.model_copy(update={"distill": distill.model_copy(update={"teacher": None})})
    models = recipe.build_models(config)
    used = ckpt.load_models(path, models, ema=ema)
    print(f"trainhub: loaded {', '.join(used)} from {path}", file=sys.stderr)
    return recipe, config, models, path


def cmd_sample(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.plugins import get_plugins

    recipe_name = rest[0] if rest else ""
    recipe = get_plugins().recipe(recipe_name)
    p = argparse.ArgumentParser(prog=f"trainhub sample {recipe_name}", description=f"Generate with a trained {recipe_name} checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory: its best checkpoint (the last where it keeps no best); RUN:last, RUN:best or RUN:STEP choose")
    p.add_argument("--out", help="output directory (default: <run>/samples/cli-<time>)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    recipe.add_sample_arguments(p)
    sargs = p.parse_args(rest[1:])
    recipe, config, models, path = _load_for_inference("sample", recipe_name, sargs.checkpoint, not sargs.no_ema, [])
    from trainhub.training.devices import select_device, set_cpu_threads

    device = select_device(sargs.device)
    if device.type == "cpu":
        set_cpu_threads(config.train.cpu_threads, 0, 1)
    models = {k: m.to(device).eval() for k, m in models.items()}
    sargs.device = device
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out = Path(sargs.out) if sargs.out else run_dir / "samples" / f"cli-{time.strftime('%Y%m%d-%H%M%S')}"
    import torch

    from trainhub.training import storage

    with torch.no_grad(), storage.writing(out, where="--out"):
        out.mkdir(parents=True, exist_ok=True)
        try:
            recipe.sample(models, config, sargs, out)
        except NotImplementedError as e:
            raise UserError(str(e)) from None
    print(f"trainhub: samples written to {out}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    import torch

    p = argparse.ArgumentParser(prog="trainhub eval", description="Evaluate a checkpoint on the recipe's validation data; "
                                "extra key=value arguments override the run's saved config (e.g. data.val_root=./val).")
    p.add_argument("recipe")
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory: its best checkpoint (the last where it keeps no best); RUN:last, RUN:best or RUN:STEP choose")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of EMA")
    args, overrides = p.parse_known_args(rest)
    args.overrides = overrides

    from trainhub.kit.media import MediaWriter
    from trainhub.kit.progress import console_progress
    from trainhub.recipe import EvalContext
    from trainhub.training import checkpoint as ckpt
    from trainhub.training.data import build_loader
    from trainhub.training.devices import amp_dtype, autocast, select_device, select_precision, set_cpu_threads

    recipe, config, models, path = _load_for_inference("eval", args.recipe, args.checkpoint, not args.no_ema, args.overrides)
    device = select_device(config.train.device)
    if device.type == "cpu":
        set_cpu_threads(config.train.cpu_threads, config.loader.num_workers, 1)
    models = {k: m.to(device).eval() for k, m in models.items()}
    _, val = recipe.build_data(config)
    data = None  # as in training: a recipe without validation data evaluates what it can (say, by generating)
    if val is not None and len(val) > 0:
        loader, _ = build_loader(val, config.train.batch_size, config.loader.model_copy(update={"persistent_workers": False}),
                                 config.train.seed, 0, 1, False, recipe.collate_fn(config), shuffle=False, drop_last=False,
                                 cpu_training=device.type == "cpu")
        data = console_progress(loader, "eval", len(loader))
    dtype = amp_dtype(select_precision(config.train.precision, device))
    step = ckpt.read_state(path)["step"]
    out_root = path.parent.parent / "samples" / "eval" if path.parent.name == "checkpoints" else path / "eval"
    media = MediaWriter(out_root, step)
    ctx = EvalContext(models, data, device, config, step, path, True, lambda: autocast(device, dtype), media, console_progress)
    torch.manual_seed(config.train.seed)
    with torch.no_grad():
        metrics = recipe.evaluate(ctx)
    if not metrics and not media.items:
        raise UserError(f"recipe {args.recipe!r} has no validation data with this config, and evaluates nothing without it")
    if media.items:
        print(f"trainhub: wrote {', '.join(str(m.path) for m in media.items)}", file=sys.stderr)
    print(json.dumps({k: float(v) for k, v in metrics.items()}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace, rest: list[str]) -> int:
    from safetensors.torch import save_file

    from trainhub.training import checkpoint as ckpt
    from trainhub.training import storage
    from trainhub.training.checkpoint import consolidate, is_sharded_checkpoint

    path = ckpt.resolve_checkpoint(args.checkpoint, default="best")
    f = path / (ckpt.ema_file(args.model) if args.ema else ckpt.model_file(args.model))
    if f.is_file():
        sd = ckpt.read_tensors(f)
    elif is_sharded_checkpoint(path):
        sd = consolidate(path, args.model, ema=args.ema)
    else:
        raise UserError(f"checkpoint {path} has no {'EMA ' if args.ema else ''}weights for model {args.model!r}")
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    with storage.writing(out, partial=tmp, where="--out"):
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
        os.replace(tmp, out)
    print(f"trainhub: wrote {len(sd)} tensors to {out}", file=sys.stderr)
    return 0


def cmd_prepare(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.plugins import get_plugins

    if not rest or rest[0].startswith("-"):
        raise UserError("usage: trainhub prepare RECIPE [recipe arguments]; see trainhub prepare RECIPE --help")
    try:
        get_plugins().recipe(rest[0]).prepare(rest[1:])
    except NotImplementedError as e:
        raise UserError(str(e)) from None
    return 0


def cmd_analyze(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.observe import analyze

    return analyze.main(rest)


def cmd_new(args: argparse.Namespace, rest: list[str]) -> int:
    from trainhub.kit import scaffold

    return scaffold.main(rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
