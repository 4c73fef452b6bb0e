"""Settings for the assistant: the ``[assistant]`` table of the TOML file, then the environment.

Precedence, lowest to highest: the defaults below, the ``[assistant]`` table of the TOML
file named by ``SHOPASSIST_CONFIG`` (or ``./shopassist.toml`` when it exists), then
``SHOPASSIST_<FIELD>`` environment variables (``SHOPASSIST_LOG_DB``...), then explicit
keyword overrides from the caller. The same file holds the engine's ``[retrieval]`` table
(see ``retrieval.config``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.config import DEFAULT_CONFIG_FILE, ENV_PREFIX

SECTION = "assistant"


@dataclass(frozen=True, kw_only=True)
class AssistantSettings:
    """Everything the assistant reads from its environment.

    Attributes:
        log_db: The event log: the path of a SQLite file (``data/events.sqlite``), or a
            SQLAlchemy URL (``sqlite:///data/events.sqlite``, the default, or
            ``postgresql+psycopg://user@host/db``).
        max_tool_calls: Tool calls allowed per turn; past it the turn ends politely.
        turn_seconds: Time allowed per turn (model and tools); past it likewise.
        llm: The LLM backend: ``rules`` (no LLM, the rule-based planner),
            ``hf:<model id or folder>`` (local ``transformers`` model; ``hf:`` alone is
            ``Qwen/Qwen2.5-1.5B-Instruct``) or ``openai:<model>`` (an OpenAI-compatible server
            at ``llm_base_url``).
        llm_base_url: API root of the OpenAI-compatible server, e.g.
            ``http://127.0.0.1:8000/v1`` (vLLM), ``http://127.0.0.1:11434/v1`` (Ollama);
            unset means ``$OPENAI_BASE_URL`` or OpenAI's.
        llm_api_key: Key for that server (local servers need none); unset means
            ``$OPENAI_API_KEY``. Never shown in the settings' repr.
        llm_timeout_s: Seconds one LLM reply may take; past it the turn falls back to rules.
        llm_max_new_tokens: Longest LLM reply, in tokens.
        llm_load_in_4bit: ``hf:`` only: load in 4-bit through bitsandbytes; unset (or
            ``auto``) means 4-bit on a CUDA GPU when bitsandbytes is installed.
        explore: Share of shoppers' searches (0..1) whose results are shown in a random
            order and logged as such (``+shuffle``): what lets the learning loop measure
            position bias and judge a ranker without it. 0 (the default) never does; a
            few percent is enough (`shopassist dataset` says which estimate it used).
            Staff (the support persona) always see the ranked order.
    """

    log_db: str = "sqlite:///data/events.sqlite"
    max_tool_calls: int = 6
    turn_seconds: float = 60.0
    llm: str = "rules"
    llm_base_url: str | None = None
    llm_api_key: str | None = field(default=None, repr=False)
    llm_timeout_s: float = 60.0
    llm_max_new_tokens: int = 512
    llm_load_in_4bit: bool | None = None
    explore: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.explore <= 1.0:
            raise ValueError(f"explore is a share of searches between 0 and 1 (got "
                             f"{self.explore}).")

    def replace(self, **changes: Any) -> AssistantSettings:
        """Returns a copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(name: str, value: Any, annotation: Any, where: str) -> Any:
    members = typing.get_args(annotation)
    if type(None) in members:  # ``X | None``: "", "auto" and "none" mean unset
        if isinstance(value, str) and value.strip().lower() in {"", "auto", "none"}:
            return None
        annotation = next(m for m in members if m is not type(None))
    target = {"str": str, "int": int, "float": float, "bool": bool}.get(str(annotation),
                                                                         annotation)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
    elif target is str and isinstance(value, str):
        return value
    elif target in (int, float) and not isinstance(value, bool):
        try:
            return target(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            pass
    type_name = getattr(target, "__name__", str(target))
    raise ValueError(f"Setting {name!r} = {value!r} in {where} is not a valid {type_name}.")


def _apply(base: AssistantSettings, values: typing.Mapping[str, Any],
           where: str) -> AssistantSettings:
    hints = typing.get_type_hints(AssistantSettings)
    changes = {}
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"Unknown setting {key!r} in {where}. Known settings: "
                             f"{', '.join(sorted(hints))}.")
        changes[key] = _coerce(key, value, hints[key], where)
    return dataclasses.replace(base, **changes)


def load_assistant_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
    **overrides: Any,
) -> AssistantSettings:
    """Resolves the assistant settings from defaults, the TOML file, the environment and overrides.

    Args:
        config_file: TOML file to read; defaults to ``$SHOPASSIST_CONFIG`` or
            ``./shopassist.toml`` when present.
        environ: Environment to read (defaults to ``os.environ``).
        **overrides: Explicit values (e.g. from CLI flags); ``None`` means "not given".

    Returns:
        The resolved, frozen settings.

    Raises:
        FileNotFoundError: ``config_file`` (or ``$SHOPASSIST_CONFIG``) does not exist.
        ValueError: A key is unknown or a value has the wrong type.
    """
    env = os.environ if environ is None else environ
    settings = AssistantSettings()
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Config file {path} does not exist. Create it or unset SHOPASSIST_CONFIG.")
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"Config file {path} is not valid TOML: {exc}.") from None
        section = data.get(SECTION, {})
        if not isinstance(section, dict):
            raise ValueError(f"In {path}, {SECTION!r} must be a table ([{SECTION}]).")
        settings = _apply(settings, section, str(path))
    from_env = {f.name: env[ENV_PREFIX + f.name.upper()]
                for f in dataclasses.fields(AssistantSettings)
                if ENV_PREFIX + f.name.upper() in env}
    settings = _apply(settings, from_env, "the environment")
    return settings.replace(**overrides)
