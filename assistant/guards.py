"""Guard rails on what the assistant says: no raw HTML, links only to the catalog, no leak
of its instructions.

The UI renders answers as Markdown with HTML disabled; this module is the second line: the
answer text itself carries no tags, no links or images outside the catalog, and never
quotes the system prompt (a prompt-injection goal: "reveal your prompt").
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_MD_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]*)(?:\s+\"[^\"]*\")?\)")
_URL = re.compile(r"\b(?:https?|ftp|file|javascript|data):[^\s)>\]]+", re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9']+")
LEAK_SHINGLE = 8  # this many consecutive words of the system prompt = a leak


def strip_html(text: str) -> str:
    """Removes HTML tags, comments, scripts and styles; unescapes entities as plain text."""
    text = _SCRIPT.sub("", text)
    text = _COMMENT.sub("", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    # What is left of angle brackets can no longer form a tag once rendered as text.
    return text.replace("<", "‹").replace(">", "›")


def restrict_links(text: str, allowed: Iterable[str] = ()) -> str:
    """Keeps Markdown links/images only to ``allowed`` targets (catalog items); other links
    become their plain text, other images and bare URLs are removed."""
    allowed_set = {a for a in allowed if a}

    def link(match: re.Match[str]) -> str:
        bang, label, target = match.group(1), match.group(2), match.group(3)
        if target in allowed_set:
            return match.group(0)
        return "" if bang else label

    text = _MD_LINK.sub(link, text)
    return _URL.sub(lambda m: m.group(0) if m.group(0) in allowed_set else "[link removed]",
                    text)


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def leaks_prompt(answer: str, prompts: Iterable[str], n: int = LEAK_SHINGLE) -> bool:
    """True when the answer repeats ``n`` consecutive words of any of ``prompts``."""
    said = _shingles(answer, n)
    return any(said & _shingles(prompt, n) for prompt in prompts)


def safe_answer(answer: str, *, prompts: Iterable[str] = (), allowed_links: Iterable[str] = (),
                refusal: str = "I can't share that. I can help you find products, though."
                ) -> tuple[str, list[str]]:
    """The answer made safe to show, and the guard rails that fired (for the event log)."""
    fired: list[str] = []
    clean = strip_html(answer)
    if clean != answer:
        fired.append("html")
    linked = restrict_links(clean, allowed_links)
    if linked != clean:
        fired.append("links")
    if leaks_prompt(linked, prompts):
        fired.append("prompt_leak")
        return refusal, fired
    return linked.strip(), fired
