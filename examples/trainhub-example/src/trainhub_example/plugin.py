"""What this distribution adds to trainhub; found through ``[project.entry-points.trainhub] example``."""

from __future__ import annotations

from typing import Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    """A model variant for core's ``tiny`` recipe: ``trainhub run tiny model.name=example-resmlp``. Registered by
    reference: the module (and torch) is imported when a run builds the model, not when ``trainhub list`` runs."""
    register("example-resmlp", "trainhub_example.resmlp:ResidualMLP")


@hookimpl
def trainhub_register_loggers(register: Callable[..., None]) -> None:
    """Two run callbacks, each with a config section ``loggers.<name>`` in every recipe (off by default)."""
    from trainhub_example.csv_logger import CsvConfig, CsvLogger
    from trainhub_example.loss_spike import LossSpikeAlert, LossSpikeConfig

    register("csv", CsvLogger, CsvConfig)
    register("loss_spike", LossSpikeAlert, LossSpikeConfig)
