"""Progressive data schedules (``train.data_schedule``): other data settings, and a batch size, from an epoch on."""

from __future__ import annotations

from pydantic import ValidationError

from trainhub.config import RunConfig, format_validation_error
from trainhub.errors import ConfigError


class DataPhases:
    """The phases of ``train.data_schedule``, each validated against the recipe's data section up front.

    Phase ``-1`` is the run's own config; phase ``i`` applies from ``data_schedule[i].from_epoch`` until the next.
    """

    def __init__(self, config: RunConfig) -> None:
        self.phases = sorted(config.train.data_schedule, key=lambda p: p.from_epoch)
        self.configs: dict[int, RunConfig] = {-1: config}
        data_cls = type(config.data)
        for i, ph in enumerate(self.phases):
            try:
                data = data_cls.model_validate({**config.data.model_dump(), **ph.data})
            except ValidationError as e:
                raise ConfigError(f"train.data_schedule[{i}]: " + format_validation_error(e, data_cls).replace("invalid config: ", "")) from None
            self.configs[i] = config.model_copy(update={"data": data})

    def index(self, epoch: int) -> int:
        """The phase in force at ``epoch`` (-1: none yet)."""
        idx = -1
        for i, ph in enumerate(self.phases):
            if epoch >= ph.from_epoch:
                idx = i
        return idx

    def config(self, idx: int) -> RunConfig:
        return self.configs[idx]

    def batch_size(self, idx: int, base: int) -> int:
        return (self.phases[idx].batch_size or base) if idx >= 0 else base

    def describe(self, idx: int) -> str:
        return str(self.phases[idx].data) if idx >= 0 else "base"
