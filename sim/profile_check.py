"""Refuses a profile measured for another model (or dtype) than the one simulated."""
from __future__ import annotations

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec


def check_profile_matches(profile, model: ModelSpec, dtype: str | None = None, kernel_options: dict | None = None) -> None:
    """A profile measured for another model, model configuration or dtype is refused; and, given
    the engine's ``kernel_options`` (every option, by kernel), one measured with other kernel
    options (a profile from before they were recorded is taken as it is)."""
    if profile.model != model.name:
        raise ConfigError(f"profile is for model {profile.model!r} but the simulation is of {model.name!r}; "
                          f"measure one with batchlab profile, or drop profile= to use the roofline")
    measured_config = profile.provenance.get("model_config")
    if measured_config:
        def mine(field):  # as JSON keeps it: a tuple comes back a list
            value = getattr(model, field)
            return list(value) if isinstance(value, tuple) else value
        differing = sorted(k for k, v in measured_config.items() if k in model.__dataclass_fields__ and mine(k) != v)
        if differing:
            raise ConfigError(f"profile for {profile.model!r} was measured with a different model config "
                              f"({', '.join(f'{k}: {measured_config[k]} there, {getattr(model, k)} here' for k in differing)})")
    if dtype is not None and profile.dtype not in (dtype, "any"):
        raise ConfigError(f"profile dtype {profile.dtype!r} does not match the requested {dtype!r}")
    measured_options = profile.provenance.get("kernel_options")
    if kernel_options is not None and measured_options is not None and measured_options != kernel_options:
        differing = sorted(f"{kernel}.{name}: {measured_options.get(kernel, {}).get(name)} there, "
                           f"{kernel_options.get(kernel, {}).get(name)} here"
                           for kernel in set(measured_options) | set(kernel_options)
                           for name in set(measured_options.get(kernel, {})) | set(kernel_options.get(kernel, {}))
                           if measured_options.get(kernel, {}).get(name) != kernel_options.get(kernel, {}).get(name))
        raise ConfigError(f"profile was measured with other kernel options ({'; '.join(differing)}); measure one with "
                          f"the run's (batchlab profile with the same kernels.* settings) or set them as the profile's")
