"""Prompts are reviewed text files in ``prompts/``, loaded by name; no prompt text in code.

``SHOPASSIST_PROMPTS_DIR`` points at another folder (a shop's own wording); names are
relative paths without the ``.md`` suffix: ``shopper``, ``support``, ``tools/text_search``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "prompts"
_NAME = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+)*$")


class PromptError(LookupError):
    """A prompt file is missing or its name is malformed."""


def prompts_dir() -> Path:
    return Path(os.environ.get("SHOPASSIST_PROMPTS_DIR", DEFAULT_DIR))


@lru_cache(maxsize=64)
def _read(folder: str, name: str) -> str:
    path = Path(folder) / f"{name}.md"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise PromptError(f"Prompt {name!r} not found: {path} does not exist. Prompts live in "
                          f"{folder} (set SHOPASSIST_PROMPTS_DIR to use another folder).") from None


def load_prompt(name: str, **values: str) -> str:
    """The text of prompt ``name`` with ``{placeholders}`` filled from ``values``.

    Raises:
        PromptError: Unknown prompt, malformed name, or a placeholder without a value.
    """
    if not _NAME.match(name):
        raise PromptError(f"Malformed prompt name {name!r}: use lower-case path parts.")
    text = _read(str(prompts_dir()), name)
    try:
        return text.format(**values) if values or "{" in text else text
    except KeyError as exc:
        raise PromptError(f"Prompt {name!r} needs a value for {exc.args[0]!r}.") from None


def system_prompt(persona: str) -> str:
    """The system prompt of a persona (``shopper`` or ``support``) with the answer style."""
    if persona not in ("shopper", "support"):
        raise PromptError(f"Unknown persona {persona!r}; use shopper or support.")
    return load_prompt(persona, answer_style=load_prompt("answer_style"))
