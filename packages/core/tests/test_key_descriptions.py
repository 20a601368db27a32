"""Every key of every installed recipe has a description: `trainhub run NAME --help` lists it and `trainhub config NAME`
writes it as a comment. The recipes are the installed ones (only the built-in tiny in core's own environment), with
the logger sections every installed plugin adds."""

from __future__ import annotations

from trainhub.config import describe_keys
from trainhub.plugins import get_plugins
from trainhub.resolve import config_class_for


def test_every_key_of_every_installed_recipe_has_a_description():
    plugins = get_plugins()
    names = sorted(plugins.registry["recipes"])
    assert names, "no recipe is registered"
    missing = {}
    for name in names:
        cls = config_class_for(plugins.recipe_entry(name), plugins)
        keys = [key for key, _type, _default, description in describe_keys(cls()) if not description.strip()]
        if keys:
            missing[name] = keys
    assert not missing, "keys without a description (give them Field(description=...)): " + "; ".join(
        f"{name}: {', '.join(keys)}" for name, keys in missing.items())
