"""Registers a recipe under a name core already uses: loading it must fail naming both sides."""
from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe


@hookimpl
def trainhub_register_recipes(register):
    register(TinyRecipe())
