"""Errors the scheduler raises for bad input, each naming what was wrong and where."""


class WorkloadError(ValueError):
    """A request or workload is malformed (empty prompt, bad length, too large for the KV cache)."""


class ConfigError(ValueError):
    """A schedule or budget option is unknown or out of range."""


class SchedulerStuck(RuntimeError):
    """Work is pending but nothing can be scheduled: a bug or an impossible configuration."""
