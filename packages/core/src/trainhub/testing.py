"""pytest plugin for people writing trainhub plugins (loaded automatically when trainhub is installed).

Fixtures:

``trainhub_register``
    Register a plugin object or module for one test: ``trainhub_register(MyPlugin())``. Its
    registrations (recipes, models, losses, ...) and lifecycle hooks are active until the test ends.
``run_recipe``
    Train a recipe for a few steps in a temporary directory and check the run directory:
    ``res = run_recipe("myrecipe", steps=3, overrides=[...])`` returns a :class:`trainhub.training.run.RunResult`
    after asserting that ``config.yaml``, ``metrics.jsonl`` and a complete checkpoint exist.
``check_config_schema``
    ``check_config_schema("myrecipe", files=[path_to_yaml])``: the recipe's config schema is sound
    (see :func:`assert_config_schema`) and each shipped config file validates against it.
``read_metrics``
    ``read_metrics(run_dir, kind="train")``: the records of ``metrics.jsonl`` (optionally of one kind).
``trainhub_plugins``
    The process-wide :class:`trainhub.plugins.Plugins` (built-ins plus installed entry points).
``stop_at``
    ``stop_at(12)``: a real SIGTERM after optimizer step 12 of the next run (once), so the run saves a
    checkpoint and returns ``status == "interrupted"``; then ``train(..., resume="auto")`` to test resume.
``interrupt_and_resume``
    ``res = interrupt_and_resume("myrecipe", overrides, run_dir, at=12)``: ``stop_at(12)``, a run that must
    stop there, then the same run resumed to its end (returned); compare it with an uninterrupted run.

And :func:`assert_same_weights` (two checkpoints hold bit-identical tensors: the resume check).

``TRAINHUB_TEST_WITHOUT=tokenizers,wandb pytest ...`` runs the tests as on an install without those packages (a
package's optional extras): importing them fails as if absent, so the tests of an extra must skip
(``pytest.importorskip``) and everything else must pass.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import pluggy
import pytest

FAST = ["loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=1"]
#: Comma-separated top-level packages that the tests treat as not installed.
ENV_WITHOUT = "TRAINHUB_TEST_WITHOUT"


class _Without(importlib.abc.MetaPathFinder):
    """Makes ``packages`` unimportable, as on an install without them."""

    def __init__(self, packages: set[str]) -> None:
        self.packages = packages

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.packages:
            raise ModuleNotFoundError(f"No module named {fullname!r} ({ENV_WITHOUT})", name=fullname)


def pytest_configure(config: pytest.Config) -> None:
    _share_cores_between_workers()
    hidden = {n.strip() for n in os.environ.get(ENV_WITHOUT, "").split(",") if n.strip()}
    if hidden:
        for name in [m for m in sys.modules if m.partition(".")[0] in hidden]:
            del sys.modules[name]
        sys.meta_path.insert(0, _Without(hidden))


def _share_cores_between_workers() -> None:
    """Under pytest-xdist, each worker gets its share of the cores as OMP_NUM_THREADS (inherited by the runs and
    subprocesses it starts; an OMP_NUM_THREADS already set stays). Two workers each training with all the cores of a
    2-core machine ran a DiT step 10-30x slower than one worker alone: OpenMP threads spin while they wait."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2 or os.environ.get("OMP_NUM_THREADS"):
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    hidden = os.environ.get(ENV_WITHOUT)
    return f"trainhub: testing without {hidden} ({ENV_WITHOUT})" if hidden else None


_hookimpl = pluggy.HookimplMarker("trainhub")  # trainhub.hookimpl, without importing torch at pytest start-up


class StopAt:
    """A plugin that sends this process a real SIGTERM after optimizer step ``n`` (once)."""

    def __init__(self, n: int) -> None:
        self.n = n

    @_hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if step == self.n:
            self.n = -1
            signal.raise_signal(signal.SIGTERM)


def assert_config_schema(recipe: Any, files: Iterable[Any] = ()) -> None:
    """Check a recipe's config schema (``recipe``: a registered name or a Recipe instance).

    The defaults validate, dump to YAML and load back equal; the JSON schema builds and has the
    ``train``, ``model``, ``data`` and ``loader`` sections; an unknown key in every section is
    rejected with an error naming it; and every file in ``files`` (YAML or JSON configs the plugin
    ships) validates, passing through ``recipe.map_config`` as ``--config`` would.
    """
    import yaml
    from pydantic import BaseModel

    from trainhub import config as C
    from trainhub.errors import ConfigError
    from trainhub.plugins import get_plugins
    from trainhub.resolve import config_class_for

    plugins = get_plugins()
    rec = plugins.recipe(recipe) if isinstance(recipe, str) else recipe
    cls = config_class_for(rec, plugins)
    defaults = cls()
    again = C.validate(cls, yaml.load(C.to_yaml(defaults), Loader=C._Loader))
    assert again == defaults, "defaults do not survive a YAML round trip"
    schema = json.loads(C.json_schema(cls))
    for section in ("train", "model", "data", "loader"):
        assert section in schema["properties"], f"schema lacks section {section!r}"
    for section, value in defaults:
        if isinstance(value, BaseModel):
            with pytest.raises(ConfigError, match=f"unknown key '{section}.no_such_key_'"):
                C.validate(cls, {section: {"no_such_key_": 1}})
    for f in files:
        C.resolve(cls, Path(str(f)), file_mapper=rec.map_config)


def assert_same_weights(a: Any, b: Any, files: Iterable[str] = ("model.safetensors",)) -> None:
    """Checkpoint directories ``a`` and ``b`` hold the same keys and bit-identical tensors in each of ``files``."""
    from safetensors.torch import load_file

    for name in files:
        ta, tb = load_file(str(Path(a) / name)), load_file(str(Path(b) / name))
        assert ta.keys() == tb.keys(), f"{name}: different tensors {sorted(ta.keys() ^ tb.keys())[:5]}"
        differ = [k for k in ta if not ta[k].equal(tb[k])]
        assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def read_metrics_file(run_dir: Path, kind: Optional[str] = None) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/metrics.jsonl``; with ``kind`` ("train", "eval", "checkpoint", ...) only those."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines if x.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


@pytest.fixture
def trainhub_plugins() -> Any:
    from trainhub.plugins import get_plugins

    return get_plugins()


@pytest.fixture
def trainhub_register() -> Iterator[Callable[..., str]]:
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    added: list[str] = []

    def register(plugin: Any, name: Optional[str] = None) -> str:
        name = name or f"test-plugin-{len(added)}-{id(plugin)}"
        plugins.add(plugin, name, "test")
        added.append(name)
        return name

    yield register
    for name in added:
        info = plugins.info.pop(name, None)
        if info is not None:
            for kind, names in info.registered.items():
                for n in names:
                    plugins.registry[kind].pop(n, None)
        if plugins.pm.has_plugin(name):
            plugins.pm.unregister(name=name)


@pytest.fixture
def run_recipe(tmp_path: Path) -> Callable[..., Any]:
    from trainhub.training.run import train

    def run(recipe: Any, steps: int = 3, overrides: Optional[list[str]] = None, run_dir: Optional[Path] = None, **kwargs: Any) -> Any:
        rd = run_dir or tmp_path / f"run-{getattr(recipe, 'name', recipe)}"
        res = train(recipe, overrides=FAST + [f"train.max_steps={steps}"] + list(overrides or []), run_dir=rd, **kwargs)
        assert (res.run_dir / "config.yaml").is_file()
        records = read_metrics_file(res.run_dir)
        assert any(x["kind"] == "train" for x in records), "no training metrics were logged"
        assert res.last_checkpoint is not None and (res.last_checkpoint / "training_state.json").is_file()
        return res

    return run


@pytest.fixture
def check_config_schema() -> Callable[..., None]:
    return assert_config_schema


@pytest.fixture
def read_metrics() -> Callable[..., list[dict[str, Any]]]:
    return read_metrics_file


@pytest.fixture
def stop_at(trainhub_register: Callable[..., str]) -> Callable[[int], StopAt]:
    def add(n: int) -> StopAt:
        plugin = StopAt(n)
        trainhub_register(plugin)
        return plugin

    return add


@pytest.fixture
def interrupt_and_resume(stop_at: Callable[[int], StopAt]) -> Callable[..., Any]:
    def run(recipe: Any, overrides: list[str], run_dir: Path, at: int) -> Any:
        from trainhub.training.run import train

        stop_at(at)
        cut = train(recipe, overrides=overrides, run_dir=run_dir)
        assert cut.status == "interrupted" and cut.step == at, f"expected a stop after step {at}: {cut.status} at {cut.step}"
        return train(recipe, overrides=overrides, run_dir=run_dir, resume="auto")

    return run
