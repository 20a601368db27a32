"""What this distribution adds to trainhub; found through ``[project.entry-points.trainhub] example``."""

from __future__ import annotations

from typing import Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    """A model variant for core's ``tiny`` recipe: ``trainhub run tiny model.name=example-resmlp``."""
    from trainhub_example.resmlp import ResidualMLP

    register("example-resmlp", ResidualMLP)


@hookimpl
def trainhub_register_loggers(register: Callable[..., None]) -> None:
    """Two run callbacks, each with a config section ``loggers.<name>`` in every recipe (off by default)."""
    from trainhub_example.csv_logger import CsvConfig, CsvLogger
    from trainhub_example.loss_spike import LossSpikeAlert, LossSpikeConfig

    register("csv", CsvLogger, CsvConfig)
    register("loss_spike", LossSpikeAlert, LossSpikeConfig)
