"""Built-in logging backends (console, jsonl, tensorboard, wandb), registered by core's plugin
(:mod:`trainhub.builtin`); their config sections are in :mod:`trainhub.loggers.configs`."""
