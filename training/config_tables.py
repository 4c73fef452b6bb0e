"""Training settings from ``[train.<model>]`` tables of the TOML config, generically.

Used by :mod:`training.fusion_config` and :mod:`training.ranker_config`. Resolution order:
the dataclass's defaults, then the table of the config file (``--config``,
``$SHOPASSIST_CONFIG`` or ``./shopassist.toml``), then ``<PREFIX><FIELD>`` environment
variables, then explicit overrides (``None`` ignored).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_CONFIG_FILE = Path("shopassist.toml")
# Every [train.<name>] table something reads; another name is a typo.
TRAIN_TABLES = ("fusion", "ranker")


def coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    """``value`` (from TOML or an environment string) as the field type ``hint``.

    Raises:
        ValueError: The value does not convert; the message names the field and source.
    """
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if typing.get_args(hint)[:1] == (str,):
            if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
                raise ValueError(f"{name} = {value!r} in {where} is not a list of names.")
            return tuple(v.strip() for v in items if v.strip())
        try:
            return tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise ValueError(f"{name} = {value!r} in {where} is not a list of numbers.") \
                from None
    if isinstance(value, str) and hint is not str:
        text = value.strip().lower()
        if hint is bool and text in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return text in ("1", "true", "yes", "on")
        try:
            if hint is not bool:
                return hint(text)
        except ValueError:
            pass
        raise ValueError(f"{name} = {value!r} in {where} is not a valid {hint.__name__}.")
    ok = {bool: isinstance(value, bool), str: isinstance(value, str),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool)}.get(hint)
    if not ok:
        raise ValueError(f"{name} = {value!r} in {where} is a {type(value).__name__}, not a "
                         f"{getattr(hint, '__name__', hint)}.")
    return hint(value)


def check_precision(value: str) -> None:
    """Raises ValueError unless ``value`` is a ``mixed_precision`` setting."""
    if value not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16 (got {value!r}).")


def check_fractions(fractions: tuple[float, ...]) -> None:
    """Raises ValueError unless ``fractions`` are train / valid / test shares summing to 1."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions are three shares (train, valid, test) summing to 1 "
                         f"(got {fractions}).")


def check_numbers(config: Any, *, at_least_one: tuple[str, ...] = ()) -> None:
    """Raises ValueError when a float field of the dataclass ``config`` (or a number of a
    tuple field) is not finite, or an integer field named in ``at_least_one`` is below 1.

    A NaN or infinite learning rate, loss weight or clip trains a head whose weights are
    all NaN, which search would then serve.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ValueError(f"{f.name} must be a finite number (got {value!r}).")
    small = [f"{name} = {getattr(config, name)}" for name in at_least_one
             if getattr(config, name) < 1]
    if small:
        raise ValueError(f"{', '.join(small)}: {', '.join(at_least_one)} must each be at "
                         "least 1.")


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
        changes[key] = coerce(value, hints[key], key, where)
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
        table = _train_tables(data, path).get(section, {})
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


def _train_tables(data: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """The ``[train.*]`` tables of a config file, after refusing a mistyped one (a
    ``[train.fusoin]`` table used to be ignored, and its settings with it)."""
    train = data.get("train", {})
    if not isinstance(train, dict):
        raise ValueError(f"In {path}, train must be tables such as [train.fusion] or "
                         f"[train.ranker] (got train = {train!r}).")
    for name in train:
        if name not in TRAIN_TABLES:
            close = difflib.get_close_matches(name, TRAIN_TABLES, n=1)
            hint = f"did you mean [train.{close[0]}]? " if close else ""
            raise ValueError(f"Unknown table [train.{name}] in {path}; {hint}known: "
                             f"{', '.join(f'[train.{t}]' for t in TRAIN_TABLES)}.")
    return train
