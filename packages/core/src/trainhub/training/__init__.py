"""The run path: from a resolved config to a trained, checkpointed run."""
