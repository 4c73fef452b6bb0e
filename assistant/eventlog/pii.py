"""Masking of personal data before anything is written to the event log.

Four kinds are replaced by tokens: e-mail addresses (``[EMAIL]``), payment card numbers
(``[CARD]``), phone numbers (``[PHONE]``) and street addresses (``[ADDRESS]``). The rules
lean towards masking, except where shop talk would suffer: a card is 13–19 digits that pass
the Luhn check (so order numbers and product ids stay), a bare run of digits is a phone
number only in a phone shape (``+44 …``, ``(415) 555-0132``, ``020 7946 0958``) or right after
a word such as "call" or "phone", and an address needs a house number, a street name and a
street word. Prices ("under 1500"), sizes ("EU 42"), years and product ids ("15970") are
kept.

Passes run in a fixed order — e-mails, cards, phones, addresses — so a longer, more
specific match is never split by a looser one, and masking is idempotent: the tokens hold
no digits and no ``@``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

EMAIL = "[EMAIL]"
CARD = "[CARD]"
PHONE = "[PHONE]"
ADDRESS = "[ADDRESS]"
TOKENS = (EMAIL, CARD, PHONE, ADDRESS)

# --- e-mail -----------------------------------------------------------------------------
# Each pattern may only start where its first part can start (the look-behinds), so a long
# run of word characters is scanned once, not once per position.
_EMAIL = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]+"
    r"@(?:[\w-]+\.)+(?:[^\W\d_]{2,}|xn--[\w-]+)(?![\w-])")
# "jane [at] example [dot] com", "jane(at)example.com"
_EMAIL_SPELLED = re.compile(
    r"(?<![\w.+-])[\w.+-]+\s*[\[(]\s*at\s*[\])]\s*"
    r"[\w-]+(?:(?:\s*[\[(]\s*dot\s*[\])]\s*|\.)[\w-]+)+",
    re.IGNORECASE)
_SPELLED_AT = re.compile(r"[\[(]\s*at\s*[\])]", re.IGNORECASE)

# --- payment cards ------------------------------------------------------------------------
# Digit groups joined by single spaces or dashes; which sub-runs are cards is decided below.
_DIGIT_RUN = re.compile(r"(?<![\d+])\d+(?:[ \u00a0\-\u2013]{1,3}\d+)*(?!\d)")
_GROUP = re.compile(r"\d+")

# --- phones -------------------------------------------------------------------------------
_SEP = r"[ \u00a0.\-]"
# +44 20 7946 0958, +1 (415) 555-0132, 0044 20 7946 0958
_PHONE_INTL = re.compile(
    r"(?<![\w+])(?:\+|00)\s?\d{1,4}(?:[ \u00a0.\-/]?\(?\d{1,5}\)?){1,7}(?!\d)")
# (415) 555-0132, 415.555.0132, 1-800-555-0199
_PHONE_NANP = re.compile(
    rf"(?<![\w+])(?:1{_SEP}?)?(?:\(\d{{3}}\)[ \u00a0]?|\d{{3}}{_SEP})\d{{3}}{_SEP}\d{{4}}(?!\d)")
# Trunk-prefix national numbers: 020 7946 0958, 07700 900123, 06 12 34 56 78, 030 12345678
_PHONE_TRUNK = re.compile(rf"(?<![\w+])\(?0[1-9]\d{{0,4}}\)?(?:{_SEP}?\d{{2,5}}){{1,5}}(?!\d)")
# Any digit run right after a word that announces a phone number: "call me on 5550132". The
# gap may not cross a token, so masking twice finds nothing new.
_PHONE_CUE = re.compile(
    r"\b(?:phone|ph|tel|telephone|mobile|cell|cellphone|call|text|whatsapp|sms|fax|reach|"
    r"contact|number|telefon|téléphone|portable|handy|móvil|cellulare)\b"
    r"[^\d\n\[\]]{0,24}?(?P<number>\+?\(?\d[\d \u00a0().\-]{5,22}\d)(?!\d)",
    re.IGNORECASE)

# --- street addresses ---------------------------------------------------------------------
# Words that never make a street name, so "2 shirts for the road" is not an address.
_NOT_STREET_NAMES = """
the a an of for to in on at by with and or my your our their his her its this that these those
some any more less than under over per x pcs piece pieces pair pairs size sizes item items cm mm
kg g ml inch inches day days week weeks month months year years
"""
NOT_STREET_NAMES = frozenset(_NOT_STREET_NAMES.split())
_STOP = rf"(?:{'|'.join(sorted(NOT_STREET_NAMES, key=len, reverse=True))})\b"
_NAME_WORD = rf"(?!{_STOP})(?:\d{{1,3}}(?:st|nd|rd|th)|[^\W\d_][\w'’.\-]*)"
_EN_SUFFIX = ("street|st|road|rd|avenue|ave|av|lane|ln|boulevard|blvd|drive|dr|ct|pl|terrace|"
              "terr|crescent|cres|highway|hwy|parkway|pkwy|sq|cir|alley|esplanade|quay|wharf")
# Street words that are also everyday words count only when capitalised ("12 Abbey Way"). In
# the pattern itself, so a rejected reading backtracks to the next one ("1 Elm Street hill").
_TITLE_ONLY = ("way", "row", "mews", "grove", "gardens", "hill", "walk", "trail", "loop",
               "park", "green", "rise", "view", "place", "close", "court", "square", "circle")
_SUFFIX = "|".join([_EN_SUFFIX, *(f"(?-i:{w[0].upper()}){w[1:]}" for w in _TITLE_ONLY)])
_UNIT = r"(?:,?\s*(?:apt|apartment|suite|ste|unit|flat|fl|floor|#)\.?\s*#?[\w-]{1,6}\b)?"
_ADDRESS_EN = re.compile(
    rf"(?<![\w$€£₹.,/-])(?P<num>\d{{1,5}}[a-z]?(?:[-/]\d{{1,5}}[a-z]?)?),?\s+"
    rf"(?P<name>(?:{_NAME_WORD}\s+){{1,4}})(?P<suffix>{_SUFFIX})\b\.?{_UNIT}",
    re.IGNORECASE)
# A lower-case "10 urban street" after one of these is a size or a price, not an address.
_NUMBER_CUE = re.compile(
    r"(?:\bsizes?|\beu|\buk|\bus|\bwaist|\blength|\binseam|\bunder|\bover|\bbelow|\babove|"
    r"\bthan|\bup to|\baround|\babout|\bbetween)\s*$", re.IGNORECASE)
_PARTICLE = r"(?:de|du|des|del|della|di|da|do|dos|das|la|le|el|los|las|l'|d')"
_CAP_WORD = r"[A-ZÀ-ÖØ-Þ][\w'’\-]*"
# French / Belgian: 12 rue de la Paix, 5bis avenue Victor-Hugo
_ADDRESS_FR = re.compile(
    rf"(?<![\w.,])\d{{1,4}}(?:\s?(?:bis|ter|[a-z]))?,?\s+"
    rf"(?i:rue|avenue|av\.|bd|boulevard|chemin|allée|allee|impasse|quai|place|route|cours)\s+"
    rf"(?:{_PARTICLE}\s*)*{_CAP_WORD}(?:[\s\-](?:{_PARTICLE}\s*)*{_CAP_WORD}){{0,3}}")
# German / Dutch / Nordic: Hauptstraße 5, Berliner Str. 12a, Kalverstraat 1
_ADDRESS_DE = re.compile(
    r"(?<![\w\-])[^\W\d_][\w\-]*?\s?(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|"
    r"ufer|straat|laan|gracht|plein|steeg|vej|gatan|vägen|veien)\s+\d{1,4}\s?[a-z]?(?![\w])",
    re.IGNORECASE)
# Spanish / Italian / Portuguese: Calle Mayor 10, Via Roma 12, Rua Augusta, 100
_ADDRESS_ES = re.compile(
    rf"\b(?:(?i:calle|c/|avenida|avda\.?|plaza|paseo|carrer|viale|piazza|corso|largo|rua|"
    rf"travessa|praça)|Via)\s+(?:{_PARTICLE}\s+)*{_CAP_WORD}"
    rf"(?:\s+(?:{_PARTICLE}\s+)*{_CAP_WORD}){{0,3}},?\s*(?:n[º°o.]\s*)?\d{{1,4}}(?!\d)")
_PO_BOX = re.compile(r"\b(?:p\.?\s?o\.?\s?box|post\s+office\s+box|postfach|apartado)\s*\d{1,8}\b",
                     re.IGNORECASE)


def luhn_valid(digits: str) -> bool:
    """Whether a string of decimal digits passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_shaped(groups: list[str]) -> bool:
    digits = "".join(groups)
    if not 13 <= len(digits) <= 19:
        return False
    # Written cards come in blocks of 4–6 (4-4-4-4, 4-6-5, 4-4-4-4-3); a list of sizes or
    # prices ("38 40 42 44 46 48 50") does not, even when its digits happen to pass Luhn.
    if len(groups) > 1 and not all(4 <= len(g) <= 6 for g in groups[:-1]):
        return False
    return luhn_valid(digits)


def _mask_cards(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        run = match.group()
        groups = list(_GROUP.finditer(run))
        spans: list[tuple[int, int]] = []
        i = 0
        while i < len(groups):
            for j in range(min(len(groups), i + 8) - 1, i - 1, -1):
                if _card_shaped([g.group() for g in groups[i:j + 1]]):
                    spans.append((groups[i].start(), groups[j].end()))
                    i = j + 1
                    break
            else:
                i += 1
        for start, end in reversed(spans):
            run = run[:start] + CARD + run[end:]
        return run

    return _DIGIT_RUN.sub(replace, text)


def _n_digits(text: str) -> int:
    return sum(ch.isdecimal() for ch in text)


def _mask_phones(text: str) -> str:
    def intl(match: re.Match[str]) -> str:
        number = match.group()
        # "0044 20 …" is a phone number; "00123456" is more likely a zero-padded id.
        if number.startswith("00") and not re.search(r"[^\d]", number):
            return number
        return PHONE if _n_digits(number) >= 8 else number

    def trunk(match: re.Match[str]) -> str:
        return PHONE if _n_digits(match.group()) >= 9 else match.group()

    def cue(match: re.Match[str]) -> str:
        number = match.group("number")
        if _n_digits(number) < 7:
            return match.group()
        start, end = match.span("number")
        whole = match.group()
        offset = match.start()
        return whole[:start - offset] + PHONE + whole[end - offset:]

    text = _PHONE_INTL.sub(intl, text)
    text = _PHONE_NANP.sub(PHONE, text)
    text = _PHONE_TRUNK.sub(trunk, text)
    return _PHONE_CUE.sub(cue, text)


def _mask_addresses(text: str) -> str:
    def english(match: re.Match[str]) -> str:
        lower_case = not any(w[0].isupper() for w in match.group("name").split())
        before = match.string[max(0, match.start() - 24):match.start()]
        if lower_case and _NUMBER_CUE.search(before):
            return match.group()
        return ADDRESS

    text = _ADDRESS_EN.sub(english, text)
    for pattern in (_ADDRESS_FR, _ADDRESS_DE, _ADDRESS_ES, _PO_BOX):
        text = pattern.sub(ADDRESS, text)
    return text


def mask(text: str) -> str:
    """Replaces e-mails, card numbers, phone numbers and street addresses with tokens.

    Args:
        text: Any text: a shopper's message, a tool argument, an error message.

    Returns:
        The text with each piece of personal data replaced by ``[EMAIL]``, ``[CARD]``,
        ``[PHONE]`` or ``[ADDRESS]``; everything else unchanged. ``mask(mask(t)) == mask(t)``.
    """
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    if _SPELLED_AT.search(text):
        text = _EMAIL_SPELLED.sub(EMAIL, text)
    if any(ch.isdecimal() for ch in text):
        text = _mask_cards(text)
        text = _mask_phones(text)
        text = _mask_addresses(text)
    return text


def mask_data(value: Any) -> Any:
    """Masks every string inside a JSON-able structure and returns a JSON-able copy.

    Dict keys are masked too; integers that mask to a token (a card or phone number sent as
    a number) become that token; non-finite floats become ``None`` (JSON has no NaN);
    tuples and sets become lists; dataclasses become dicts; anything else becomes its
    masked ``str``.

    Args:
        value: A str, number, bool, None, mapping, sequence, set or dataclass, nested freely.

    Returns:
        A copy holding only JSON types, with all text masked.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, numbers.Integral):
        as_text = str(int(value))
        masked = mask(as_text)
        return int(value) if masked == as_text else masked
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            return None
        if number.is_integer() and abs(number) >= 1e6:
            as_text = str(int(number))
            masked = mask(as_text)
            return number if masked == as_text else masked
        return number
    if isinstance(value, Mapping):
        return {mask(str(k)): mask_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_data(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return mask(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return mask_data(dataclasses.asdict(value))
    return mask(str(value))
