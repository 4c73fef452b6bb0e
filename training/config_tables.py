"""Training settings from ``[train.<model>]`` tables of the TOML config, generically.

The resolution order and the value checks are those of :mod:`training.fusion_config`
(whose ``_coerce`` does the type conversions): the dataclass's defaults, then the table of
the config file (``--config``, ``$SHOPASSIST_CONFIG`` or ``./shopassist.toml``), then
``<PREFIX><FIELD>`` environment variables, then explicit overrides (``None`` ignored).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from training.fusion_config import DEFAULT_CONFIG_FILE, _coerce

T = TypeVar("T")


def apply_values(base: T, values: Mapping[str, Any], where: str) -> T:
    """A copy of the dataclass ``base`` with ``values`` converted to its field types.

    Raises:
        ValueError: An unknown key (the message lists the known ones) or a bad value.
    """
    hints = typing.get_type_hints(type(base))
    changes = {}
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"Unknown setting {key!r} in {where}; known: "
                             f"{', '.join(sorted(hints))}.")
        changes[key] = _coerce(value, hints[key], key, where)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def load_section(cls: type[T], section: str, env_prefix: str,
                 config_file: str | os.PathLike[str] | None = None,
                 environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Resolves the dataclass ``cls`` from ``[train.<section>]`` (see the module docstring).

    Raises:
        FileNotFoundError: ``config_file`` (or ``$SHOPASSIST_CONFIG``) does not exist.
        ValueError: Unknown keys, wrong types or invalid values.
    """
    env = os.environ if environ is None else environ
    config = cls()
    path = config_file or env.get("SHOPASSIST_CONFIG")
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"Config file {path} is not valid TOML: {exc}.") from None
        table = data.get("train", {}).get(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"In {path}, [train.{section}] must be a table.")
        config = apply_values(config, table, f"{path} [train.{section}]")
    from_env = {f.name: env[env_prefix + f.name.upper()]
                for f in dataclasses.fields(config)  # type: ignore[arg-type]
                if env_prefix + f.name.upper() in env}
    if from_env:
        config = apply_values(config, from_env, "the environment")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[type-var]
