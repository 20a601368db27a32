"""docs/writing-plugins.md carries the hook and plugin-API references generated from the code: they must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trainhub import hookspecs

ROOT = Path(__file__).resolve().parents[3]


def _tool():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "tools" / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_in_writing_plugins_is_up_to_date():
    tool = _tool()
    text = tool.DOC.read_text(encoding="utf-8")
    assert tool.update(text, hookspecs) == text, "docs/writing-plugins.md is out of date: run python tools/gen_api_docs.py"


def test_reference_lists_every_hookspec_with_its_docstring():
    tool = _tool()
    section = tool.render(hookspecs)
    names = [f.__name__ for f in tool.hookspecs(hookspecs)]
    assert len(names) == len([n for n in dir(hookspecs) if n.startswith("trainhub_")]) >= 11
    for name in names:
        assert f"#### `{name}`" in section
    assert "Register recipes: `register(MyRecipe)`, a `trainhub.Recipe` subclass" in section
    assert f"Hookspec version: **{hookspecs.HOOKSPEC_VERSION}**" in section


def test_check_mode_reports_a_stale_reference():
    tool = _tool()
    stale = tool.render(hookspecs).replace("Register recipes", "Registers recipes")
    text = f"intro\n\n{stale}\n\n{tool.render_api()}\n\noutro\n"
    fresh = tool.update(text, hookspecs)
    assert fresh != text and fresh.startswith("intro\n\n") and fresh.endswith("\n\noutro\n")
    assert tool.update(fresh, hookspecs) == fresh


def test_api_reference_documents_the_recipe_protocol_and_the_contexts():
    section = _tool().render_api()
    for heading in ("### `trainhub.Recipe`", "### `trainhub.StepContext`", "### `trainhub.EvalContext`",
                    "### `trainhub.OptimizerSpec`", "### `trainhub.components.OptimizerSettings`", "### `trainhub.ResumableSampler`"):
        assert heading in section
    assert "#### `Recipe.train_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]`" in section
    assert "| `media` | `MediaWriter` | media.image(name, array)" in section  # fields with the comments beside them
    assert "| `cache` | `dict[str, Any]` | shared by the optimizer phases of one micro-batch |" in section

