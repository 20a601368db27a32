"""pytest plugin for people writing trainhub plugins (loaded automatically when trainhub is installed).

Fixtures:

``trainhub_register``
    Register a plugin object or module for one test: ``trainhub_register(MyPlugin())``. Its
    registrations (recipes, models, losses, ...) and lifecycle hooks are active until the test ends.
``run_recipe``
    Train a recipe for a few steps in a temporary directory and check the run directory:
    ``res = run_recipe("myrecipe", steps=3, overrides=[...])`` returns a :class:`trainhub.run.RunResult`
    after asserting that ``config.yaml``, ``metrics.jsonl`` and a complete checkpoint exist.

Helpers: :func:`check_config_schema` validates a recipe's schema and defaults round trip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

FAST = ["loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=1"]


def check_config_schema(recipe: Any) -> None:
    """Defaults validate, dump to YAML and load back equal, and the JSON schema builds."""
    import yaml

    from trainhub import config as C
    from trainhub.plugins import get_plugins
    from trainhub.run import config_class_for

    cls = config_class_for(recipe, get_plugins())
    defaults = cls()
    again = C.validate(cls, yaml.load(C.to_yaml(defaults), Loader=C._Loader))
    assert again == defaults, "defaults do not survive a YAML round trip"
    schema = json.loads(C.json_schema(cls))
    for section in ("train", "model", "data", "loader"):
        assert section in schema["properties"], f"schema lacks section {section!r}"


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
    from trainhub.run import train

    def run(recipe: Any, steps: int = 3, overrides: Optional[list[str]] = None, run_dir: Optional[Path] = None, **kwargs: Any) -> Any:
        rd = run_dir or tmp_path / f"run-{getattr(recipe, 'name', recipe)}"
        res = train(recipe, overrides=FAST + [f"train.max_steps={steps}"] + list(overrides or []), run_dir=rd, **kwargs)
        assert (res.run_dir / "config.yaml").is_file()
        lines = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any(x["kind"] == "train" for x in lines), "no training metrics were logged"
        assert res.last_checkpoint is not None and (res.last_checkpoint / "training_state.json").is_file()
        return res

    return run
