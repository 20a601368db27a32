"""Plugin discovery from really installed distributions (pip --target), broken and duplicate plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainhub import hookimpl
from trainhub.errors import PluginError
from trainhub.plugins import ENV_ALLOW, ENV_DISABLE, Plugins

HERE = Path(__file__).parent / "plugins"


def _pip_install(name: str, target: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(HERE / name)]
    subprocess.run(cmd, check=True, capture_output=True)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {n: _pip_install(n, tmp_path_factory.mktemp(n)) for n in ("good", "broken", "dup", "exits")}


def _plugins(monkeypatch: pytest.MonkeyPatch, installed: dict[str, Path], *names: str) -> Plugins:
    for n in names:
        monkeypatch.syspath_prepend(str(installed[n]))
    from trainhub import builtin

    p = Plugins()
    p.add(builtin, "trainhub", "trainhub")
    p.load_entry_points()
    return p


def test_installed_entry_point_is_discovered(monkeypatch, installed):
    p = _plugins(monkeypatch, installed, "good")
    assert p.info["test_good"].distribution == "trainhub-test-good"
    assert p.info["test_good"].version == "1.2.3"
    assert p.info["test_good"].registered == {"recipes": ["shifted_tiny"], "losses": ["half_l1"]}
    assert p.recipe("shifted_tiny").name == "shifted_tiny"
    assert p.loss("half_l1").__name__ == "HalfL1"


def test_broken_plugin_is_reported_and_others_work(monkeypatch, installed):
    with pytest.warns(UserWarning, match="test_broken.*trainhub-test-broken.*broken on purpose"):
        p = _plugins(monkeypatch, installed, "good", "broken")
    assert "test_broken" in p.failed and "broken on purpose" in p.failed["test_broken"]
    assert p.recipe("shifted_tiny")  # the good one still loaded
    with pytest.raises(PluginError, match="plugins that failed to load: test_broken"):
        p.recipe("nonexistent")


def test_a_plugin_calling_sys_exit_on_import_is_reported_and_others_work(monkeypatch, installed):
    with pytest.warns(UserWarning, match=r"plugin 'test_exits' \(trainhub-test-exits\) failed to load and is skipped: "
                                         r"it called sys.exit\(3\) while loading"):
        p = _plugins(monkeypatch, installed, "good", "exits")
    assert p.recipe("shifted_tiny") and "test_exits" in p.failed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed["exits"]), os.environ.get("PYTHONPATH", "")]),
           ENV_ALLOW: "test_exits"}
    env.pop(ENV_DISABLE, None)
    listed = subprocess.run([sys.executable, "-m", "trainhub", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "test_exits     FAILED: trainhub-test-exits: it called sys.exit(3) while loading" in listed.stdout
    assert listed.stdout.startswith("tiny ")  # `run` loads plugins the same way (it exited 3 too)


def test_duplicate_registration_names_both_distributions(monkeypatch, installed):
    with pytest.raises(PluginError, match="recipe 'tiny' is registered by both 'trainhub'.*'trainhub-test-dup'"):
        _plugins(monkeypatch, installed, "dup")


def test_autoload_can_be_disabled_and_restricted(monkeypatch, installed):
    monkeypatch.setenv(ENV_DISABLE, "1")
    p = _plugins(monkeypatch, installed, "good", "broken")
    assert set(p.info) == {"trainhub"} and not p.failed
    monkeypatch.delenv(ENV_DISABLE)
    monkeypatch.setenv(ENV_ALLOW, "test_good")
    p = _plugins(monkeypatch, installed, "good", "broken")
    assert set(p.info) == {"trainhub", "test_good"} and not p.failed


def test_throwaway_plugin_registers_and_receives_lifecycle_hooks(tmp_path, quiet):
    """The pytest/llm style: register a plugin object for one test."""
    from trainhub.plugins import get_plugins
    from trainhub.training.run import train

    seen: list[tuple[str, int]] = []

    class Recorder:
        @hookimpl
        def trainhub_run_start(self, run):
            seen.append(("start", run.step))

        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            seen.append(("step", step))

        @hookimpl
        def trainhub_eval_end(self, run, step, metrics, media):
            seen.append(("eval", step))

        @hookimpl
        def trainhub_checkpoint_saved(self, run, step, path, is_best):
            seen.append(("ckpt", step))

        @hookimpl
        def trainhub_run_end(self, run, status):
            seen.append((status, run.step))

    plugins = get_plugins()
    plugins.pm.register(Recorder(), name="recorder")
    try:
        train("tiny", overrides=quiet + ["train.max_steps=4", "train.eval_every=2", "train.best_metric=null"], run_dir=tmp_path / "r")
    finally:
        plugins.pm.unregister(name="recorder")
    assert seen == [("start", 0), ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4), ("ckpt", 4), ("completed", 4)]


def test_a_watching_plugin_warns_through_the_run(tmp_path, quiet, trainhub_register):
    """run.warn reaches the console and metrics.jsonl at the trainer's step, like the trainer's own warnings."""
    import json

    from trainhub.training.run import train

    class Watch:
        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            if step == 3:
                run.warn("my_watch", "step 3 looks odd", {"value": 1.5})

    trainhub_register(Watch(), "watch")
    res = train("tiny", overrides=quiet + ["train.max_steps=4"], run_dir=tmp_path / "r")
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    warnings = [r for r in records if r["kind"] == "warning" and r["warning"] != "cpu"]  # cpu: a loaded test machine
    assert [(w["warning"], w["step"], w["message"], w["value"]) for w in warnings] == [("my_watch", 3, "step 3 looks odd", 1.5)]


def test_failing_hook_names_plugin_and_can_be_disabled(tmp_path, quiet):
    from trainhub.plugins import get_plugins
    from trainhub.training.run import train

    class Bad:
        calls = 0

        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            Bad.calls += 1
            raise ValueError("boom")

    plugins = get_plugins()
    plugins.pm.register(Bad(), name="bad-callback")
    try:
        with pytest.raises(PluginError, match="plugin 'bad-callback' failed in trainhub_step_end: ValueError: boom"):
            train("tiny", overrides=quiet + ["train.max_steps=3"], run_dir=tmp_path / "a")
        Bad.calls = 0  # "stop" left the plugin registered; now it gets disabled after one failure
        with pytest.warns(UserWarning, match="'bad-callback' failed in trainhub_step_end and is disabled"):
            res = train("tiny", overrides=quiet + ["train.max_steps=3", "plugin_errors=disable"], run_dir=tmp_path / "b")
        assert res.status == "completed" and Bad.calls == 1
    finally:
        if plugins.pm.has_plugin("bad-callback"):
            plugins.pm.unregister(name="bad-callback")


def test_tiny_loss_follows_the_config_of_each_run(tmp_path, quiet, trainhub_register):
    from torch import nn

    from trainhub.training.run import train

    losses = []

    class Watch:
        @hookimpl
        def trainhub_run_start(self, run):
            losses.append(type(run.recipe.loss_fn))

    trainhub_register(Watch())
    for loss in ("mse", "l1"):
        train("tiny", overrides=quiet + ["train.max_steps=1", f"data.loss={loss}"], run_dir=tmp_path / loss)
    assert losses == [nn.MSELoss, nn.L1Loss]


def test_logger_that_fails_to_start_is_named(tmp_path, quiet, trainhub_register):
    from trainhub.config import Section
    from trainhub.errors import UserError
    from trainhub.training.run import train

    class BrokenConfig(Section):
        enabled: bool = True

    class Broken:
        def __init__(self, config, run):
            raise OSError("cannot open /nonexistent")

    class Plugin:
        @hookimpl
        def trainhub_register_loggers(self, register):
            register("broken", Broken, BrokenConfig)

    trainhub_register(Plugin())
    with pytest.raises(UserError, match=r"logger 'broken' \(test\) failed to start: OSError: cannot open /nonexistent"):
        train("tiny", overrides=quiet + ["train.max_steps=1"], run_dir=tmp_path / "a")
    with pytest.warns(UserWarning, match="logger 'broken' .* continuing without it"):
        res = train("tiny", overrides=quiet + ["train.max_steps=1", "plugin_errors=disable"], run_dir=tmp_path / "b")
    assert res.status == "completed"


def test_misspelled_hook_is_an_error_naming_the_plugin(trainhub_register):
    class Typo:
        @hookimpl
        def trainhub_stepend(self, run, step, metrics):
            pass

    with pytest.raises(PluginError, match=r"plugin 'typo' \(test\).*trainhub_stepend"):
        trainhub_register(Typo(), name="typo")


def test_every_run_gets_its_own_recipe_instance(monkeypatch, installed):
    """A recipe keeps per-run state on ``self`` safely: registered as a class, by reference or as an instance (then
    copied), each lookup builds a new one."""
    p = _plugins(monkeypatch, installed, "good")
    for name in ("tiny", "shifted_tiny"):  # by reference, and an instance registered by the test plugin
        a, b = p.recipe(name), p.recipe(name)
        assert a is not b and type(a) is type(b) and a.name == name
    a.cached = "state of one run"
    assert not hasattr(p.recipe("shifted_tiny"), "cached")


def test_a_recipe_registered_by_reference_is_listed_without_importing_it(monkeypatch):
    from trainhub.plugins import RecipeEntry

    class Plugin:
        @hookimpl
        def trainhub_register_recipes(self, register):
            register("lazy", "no_such_package.recipe:Lazy", config="trainhub.builtin.tiny_config:TinyConfig",
                     description="registered by reference")

    p = Plugins()
    p.add(Plugin(), "lazy-plugin", "lazy-dist")
    entry = p.recipe_entry("lazy")
    assert isinstance(entry, RecipeEntry) and entry.description == "registered by reference"
    assert entry.config_class.__name__ == "TinyConfig" and entry.package == "no_such_package"
    with pytest.raises(ModuleNotFoundError):
        p.recipe("lazy")


def test_a_reference_whose_recipe_disagrees_with_its_registration_is_refused():
    class Plugin:
        @hookimpl
        def trainhub_register_recipes(self, register):
            register("not_tiny", "trainhub.builtin.tiny:TinyRecipe", config="trainhub.builtin.tiny_config:TinyConfig")

    p = Plugins()
    p.add(Plugin(), "liar", "liar-dist")
    with pytest.raises(PluginError, match="registered with name 'not_tiny'.*TinyRecipe has name 'tiny'"):
        p.recipe("not_tiny")


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["plugins"], ["config", "tiny"], ["run", "tiny", "--help"]])
def test_commands_that_only_list_or_describe_import_no_torch(argv):
    code = ("import sys\nfrom trainhub.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('\\nIMPORTED', 'torch' in sys.modules, sorted(m for m in sys.modules if m.endswith('.recipe')))" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "IMPORTED False []", out[-2000:]
