"""One service's settings from its layers: flags > environment (PDSERVE_*) > YAML file > defaults.

The settings class is a pydantic-settings model whose env prefix is the service's; `load`
reads each layer once into a plain dict, merges them (a section such as `engine` or
`internal_tls` given by two layers is merged key by key) and validates the result once, so an
error names the setting at fault whichever layer gave it. Used by the `pdserve router` and
`pdserve worker` commands; `pdserve up` has its own loader (pdserve/config.py) for its
pool-size rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource

S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], config_file: Path | None, flags: dict[str, Any]) -> S:
    """`cls` from the layers; flags that are None count as not given. Raises ValueError
    (pydantic's ValidationError is one) naming the setting, or the file, at fault."""
    file_values = read_yaml(config_file) if config_file is not None else {}
    unknown = set(file_values) - set(cls.model_fields)
    if unknown:
        raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
    env_values = EnvSettingsSource(cls)()  # raw PDSERVE_* values, validated below
    given = {key: value for key, value in flags.items() if value is not None}
    merged: dict[str, Any] = {}
    for layer in (file_values, env_values, given):
        merged = merge(merged, layer)
    return cls(**merged)  # every layer is in `merged`, so the model's own env read adds nothing


def merge(lower: dict[str, Any], higher: dict[str, Any]) -> dict[str, Any]:
    """`higher` over `lower`; a section (a dict) given in both is merged key by key."""
    merged = lower | higher
    for key, value in higher.items():
        if isinstance(value, dict) and isinstance(lower.get(key), dict):
            merged[key] = lower[key] | value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read it as YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return values


def describe(error: ValueError) -> str:
    """A settings error for a person: one `setting: message` line per error of a pydantic
    ValidationError (no input dump, no link), else the error's own text."""
    if not isinstance(error, ValidationError):
        return str(error)
    lines = []
    for detail in error.errors():
        where = ".".join(str(part) for part in detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)
