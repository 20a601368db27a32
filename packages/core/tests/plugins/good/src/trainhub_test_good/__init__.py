"""A third-party plugin used by the tests: a recipe that reuses core's tiny model and a custom loss."""
from torch import nn

from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe


class ShiftedTiny(TinyRecipe):
    name = "shifted_tiny"
    description = "tiny, from a test plugin"


class HalfL1(nn.L1Loss):
    def forward(self, a, b):
        return 0.5 * super().forward(a, b)


@hookimpl
def trainhub_register_recipes(register):
    register(ShiftedTiny())


@hookimpl
def trainhub_register_losses(register):
    register("half_l1", HalfL1)
