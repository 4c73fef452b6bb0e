"""Reading constraints out of a shopper's words, in the catalog's own vocabulary.

"red dress for women under 1500" becomes ``colour = Red``, ``category = Dresses``,
``gender = Women``, ``price <= 1500``, and the words keep their meaning for the text
embedding. Values come from the index's vocabulary (what the catalog actually holds), plus
a small table of everyday synonyms (``gray`` -> Grey, ``tee`` -> Tshirts, ``ladies`` ->
Women) that applies only where the catalog has the target value.

Hard filters: category, colour, gender, material, size, price, stock. Soft preferences
(boosts in ranking, never exclusions): usage and season, whose catalog labels are noisy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from retrieval.filters import ColumnTable, Filters

HARD_KEYS = ("category", "subcategory", "colour", "gender", "material", "size")
SOFT_KEYS = ("usage", "season")
VOCAB_KEYS = HARD_KEYS + SOFT_KEYS
# Phrases matched per key: when one phrase could mean several keys, the first key wins.
KEY_PRIORITY = ("category", "subcategory", "colour", "gender", "material", "usage", "season",
                "size")

SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "gray": ("Grey",), "navy": ("Navy Blue",), "offwhite": ("Off White",),
        "off-white": ("Off White",), "burgundy": ("Maroon",), "wine": ("Maroon",),
        "golden": ("Gold",), "silver-coloured": ("Silver",), "beige": ("Beige",),
        "tan": ("Tan",), "khaki": ("Khaki",), "violet": ("Purple",),
    },
    "gender": {
        "women": ("Women",), "woman": ("Women",), "womens": ("Women",), "ladies": ("Women",),
        "lady": ("Women",), "female": ("Women",), "her": ("Women",), "she": ("Women",),
        "men": ("Men",), "man": ("Men",), "mens": ("Men",), "gents": ("Men",),
        "male": ("Men",), "him": ("Men",), "his": ("Men",), "he": ("Men",),
        "boys": ("Boys",), "boy": ("Boys",), "girls": ("Girls",), "girl": ("Girls",),
        "kids": ("Boys", "Girls"), "kid": ("Boys", "Girls"), "children": ("Boys", "Girls"),
        "child": ("Boys", "Girls"), "unisex": ("Unisex",),
        "guys": ("Men",), "guy": ("Men",), "gentlemen": ("Men",), "gentleman": ("Men",),
        "husband": ("Men",), "boyfriend": ("Men",), "dad": ("Men",), "father": ("Men",),
        "brother": ("Men",), "wife": ("Women",), "girlfriend": ("Women",), "mom": ("Women",),
        "mum": ("Women",), "mother": ("Women",), "sister": ("Women",), "son": ("Boys",),
        "daughter": ("Girls",),
    },
    "category": {
        "tee": ("Tshirts",), "tees": ("Tshirts",), "t-shirt": ("Tshirts",),
        "t-shirts": ("Tshirts",), "t shirt": ("Tshirts",), "t shirts": ("Tshirts",),
        "sneakers": ("Sports Shoes", "Casual Shoes"), "sneaker": ("Sports Shoes", "Casual Shoes"),
        "trainers": ("Sports Shoes",), "pants": ("Trousers", "Track Pants"),
        "trouser": ("Trousers",), "shades": ("Sunglasses",), "purse": ("Handbags", "Clutches"),
        "bag": ("Handbags", "Backpacks", "Laptop Bag", "Duffel Bag"),
        "bags": ("Handbags", "Backpacks", "Laptop Bag", "Duffel Bag"),
        "hoodie": ("Sweatshirts",), "hoodies": ("Sweatshirts",), "jumper": ("Sweaters",),
        "tank top": ("Tshirts", "Tops"), "frock": ("Dresses",), "specs": ("Sunglasses",),
        "cap": ("Caps",), "hat": ("Caps", "Hat"), "jacket": ("Jackets",), "coat": ("Jackets",),
        "shoe": ("Casual Shoes", "Sports Shoes", "Formal Shoes"),
        "running shoes": ("Sports Shoes",), "running shoe": ("Sports Shoes",),
        "gym shoes": ("Sports Shoes",), "training shoes": ("Sports Shoes",),
        "jogging shoes": ("Sports Shoes",),
    },
    "usage": {"sport": ("Sports",), "sporty": ("Sports",), "office": ("Formal",),
              "work": ("Formal",), "wedding": ("Ethnic", "Party"), "festive": ("Ethnic",)},
    "season": {"autumn": ("Fall",), "spring": ("Spring",), "winter": ("Winter",),
               "summer": ("Summer",), "rainy": ("Fall",)},
}

# The last word of a multi-word category stands for it ("shoes" -> every "... Shoes"),
# except words too generic to name a product on their own ("long sleeve shirt" is not a
# "Tablet Sleeve", "a different colour" not "Hair Colour", "gift" not "Free Gifts").
_GENERIC_LAST_WORDS = frozenset({
    "sleeve", "sleeves", "colour", "colours", "color", "colors", "suit", "suits", "set",
    "sets", "gift", "gifts", "kit", "kits", "care", "accessory", "accessories", "essentials",
    "cover", "covers"})
# Singulars that are everyday adjectives ("short dress", "tight fit"), not the category.
_NOT_SINGULAR = frozenset({"short", "tight"})
# Typo tolerance: only two neighbouring letters swapped ("tshrit", "balck"), in words of
# five letters or more. Wider corrections (a missing, doubled or wrong letter) turn common
# words into catalog values without a dictionary to tell them apart ("back" -> Black,
# "stock" -> Socks, "woven" -> Women: about 50 to 170 of 22k English words, depending on
# the rule, against the fashion catalog), so they are not made.
_TYPO_MIN = 5
_NOT_TYPOS = frozenset({"causal"})
_ALL_BUT = frozenset({"anything", "everything", "all"})  # "anything but blue" negates

# A number with an optional currency around it; _MONEY requires the currency (or a "k"),
# so that "size 8-10" or "from 2012" are not read as prices. Each has two groups: the
# digits and an optional "k".
_CUR_BEFORE = r"(?:rs\.?|inr|usd|eur|gbp|[$€£₹])"
_CUR_AFTER = r"(?:rs\.?|inr|usd|eur|gbp|dollars?|euros?|rupees?|pounds?|bucks|[$€£₹])"
_DIGITS = r"(\d+(?:[.,]\d+)?)\s*(k)?"
_NUMBER = rf"(?:{_CUR_BEFORE}\s*)?{_DIGITS}(?:\s*{_CUR_AFTER}(?![a-z]))?"
_MONEY = (rf"(?:{_CUR_BEFORE}\s*{_DIGITS}(?:\s*{_CUR_AFTER}(?![a-z]))?"
          rf"|(\d+(?:[.,]\d+)?)\s*(k)?\s*{_CUR_AFTER}(?![a-z])"
          rf"|(\d+(?:[.,]\d+)?)\s*(k)\b)")
_PRICE_WORD = r"(?:price[ds]?|priced at|costing|costs?|budget(?: of| is)?|for)"
_PRICE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Strong cues take plain numbers; weak ones ("from", "within", bare ranges) need money.
    (re.compile(rf"\bbetween\s+{_NUMBER}\s+and\s+{_NUMBER}"), "range"),
    (re.compile(rf"\b{_PRICE_WORD}\s+(?:from\s+)?{_NUMBER}\s*(?:-|–|to)\s*{_NUMBER}"
                r"(?![\w.])"), "range"),
    (re.compile(rf"(?<![\w.]){_MONEY}\s*(?:-|–|to)\s*{_NUMBER}(?![\w.])"), "range"),
    (re.compile(rf"(?<![\w.]){_NUMBER}\s*(?:-|–|to)\s*{_MONEY}"), "range"),
    (re.compile(rf"\bfrom\s+{_NUMBER}\s+to\s+{_NUMBER}"), "range"),
    # Bare "500-1500": a price only when both ends are >= 50 ("jeans 30-34" is a size).
    (re.compile(r"(?<![\w.])([5-9]\d|\d{3,})(?:[.,]\d+)?()\s*(?:-|–|to)\s*"
                r"([5-9]\d|\d{3,})(?:[.,]\d+)?()(?![\w.])"), "range"),
    (re.compile(rf"(?:\bunder|\bbelow|\bless than|\bcheaper than|\bat most|\bnot more than|"
                rf"\bno more than|\bbudget(?: of| is)?|\bmax(?:imum)?|\bup ?to|<=?)\s*"
                rf"{_NUMBER}"), "max"),
    (re.compile(rf"\bwithin\s*{_MONEY}"), "max"),
    (re.compile(rf"(?:\bover|\babove|\bmore than|\bat least|>=?)\s*{_NUMBER}"), "min"),
    (re.compile(rf"(?:\bmin(?:imum)?|\bstarting at|\bfrom)\s*{_MONEY}"), "min"),
    (re.compile(rf"(?:\baround|\babout|\bapprox(?:imately)?|\broughly|~)\s*{_NUMBER}"),
     "around"),
    (re.compile(rf"(?<![\w.]){_MONEY}"), "around"),  # a bare "$80"
]
# Words that carry no product meaning of their own in a refinement ("this but in black").
_FILLER = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "one", "ones", "same",
    "like", "similar", "but", "in", "on", "of", "for", "with", "to", "at", "by", "as", "is",
    "are", "be", "please", "show", "me", "my", "i", "we", "want", "need", "looking", "look",
    "find", "get", "buy", "something", "some", "anything", "any", "colour", "color", "version",
    "instead", "also", "just", "only", "style", "kind", "type", "different", "other", "another",
    "more", "less", "rather", "than", "so", "very", "too", "can", "could", "would", "you",
    "have", "has", "do", "does", "item", "product",
})
_STOCK = re.compile(r"\b(?:in stock|available now|available)\b")
_NO_STOCK = re.compile(r"\b(?:out of stock|not in stock|not available|unavailable|sold out)\b")
_NEGATIONS = {"not", "no", "non", "except", "without", "excluding", "neither"}
# "not red or blue": a negation carries over a list of values of the same key.
_LIST_WORDS = {"or", "nor", "and"}
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# "women's shoes", "men’s watch", "girls' dresses": the possessive is not part of the word.
_POSSESSIVE = re.compile(r"(?<=[a-z])['’]s\b|(?<=s)['’](?!\w)")


@dataclass(frozen=True)
class Match:
    """One constraint read from the text: the phrase, the key and the values it means."""

    phrase: str
    key: str
    values: tuple[str, ...]
    negated: bool = False

    def describe(self) -> str:
        verb = "not " if self.negated else ""
        return f'"{self.phrase}" -> {self.key}: {verb}{" or ".join(self.values)}'


@dataclass(frozen=True)
class ParsedQuery:
    """What :func:`QueryParser.parse` read from a message.

    Attributes:
        text: The words for the text embedding (prices and stock phrases removed).
        free_text: What the words say beyond the constraints and filler ("with long
            sleeves" of "this but in black with long sleeves"); empty when nothing is left.
            With a photo, only this refines the search by meaning.
        filters: Hard constraints.
        boosts: Soft preferences (key -> values) that raise matching products.
        matches: Every constraint read, for "why it matched" and for tests.
    """

    text: str
    free_text: str = ""
    filters: Filters = field(default_factory=Filters)
    boosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    matches: tuple[Match, ...] = ()


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _plural(word: str) -> str:
    if word.endswith("s") and not word.endswith("ss"):
        return word
    if word.endswith(("ss", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _swapped(word: str, target: str) -> bool:
    """Whether ``word`` is ``target`` with two neighbouring letters swapped."""
    if len(word) != len(target):
        return False
    diff = [i for i, (a, b) in enumerate(zip(word, target, strict=True)) if a != b]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and \
        word[diff[0]] == target[diff[1]] and word[diff[1]] == target[diff[0]]


def _norm(phrase: str) -> str:
    return " ".join(_WORD.findall(phrase.lower()))


class Vocabulary:
    """The values each filterable key takes in a catalog (stored in the index manifest)."""

    def __init__(self, values: Mapping[str, Iterable[str]]) -> None:
        self.values = {k: list(v) for k, v in values.items() if v}

    @classmethod
    def from_table(cls, table: ColumnTable, keys: Iterable[str] = VOCAB_KEYS,
                   max_values: int = 500) -> Vocabulary:
        return cls({k: table.vocabulary(k)[:max_values] for k in keys})

    def to_dict(self) -> dict[str, list[str]]:
        return dict(self.values)

    def canonical(self, key: str, value: str) -> str | None:
        """The catalog's spelling of ``value`` for ``key`` (case-insensitive), if any."""
        low = value.strip().lower()
        for known in self.values.get(key, []):
            if known.lower() == low:
                return known
        return None


class QueryParser:
    """Turns free text into filters and boosts using a :class:`Vocabulary`."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._phrases: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._build()

    def _add(self, phrase: str, key: str, values: tuple[str, ...], *, exact: bool,
             part: bool = False) -> None:
        phrase = _norm(phrase)
        if not phrase or not values:
            return
        current = self._phrases.get(phrase)
        # A part of a name ("dupatta" of "Salwar and Dupatta") yields to a value named
        # exactly so under the same key, not to another key.
        rank = (0 if exact else 1, KEY_PRIORITY.index(key) if key in KEY_PRIORITY else 99,
                1 if part else 0)
        if current is not None:
            old_key, _ = current
            old_rank = self._ranks[phrase]
            if old_rank <= rank:
                if old_rank == rank and old_key == key:  # same key: union (e.g. "shoes")
                    merged = tuple(dict.fromkeys((*current[1], *values)))
                    self._phrases[phrase] = (key, merged)
                return
        self._phrases[phrase] = (key, values)
        self._ranks[phrase] = rank

    def _build(self) -> None:
        self._ranks: dict[str, tuple[int, int, int]] = {}
        vocab = self.vocabulary.values
        for key in KEY_PRIORITY:
            for value in vocab.get(key, []):
                low = _norm(value)
                self._add(low, key, (value,), exact=True)
                names = [low]
                if key == "category" and " and " in f" {low} ":
                    # "Necklace and Chains": "necklace" and "chains" each name it.
                    names += [part.strip() for part in f" {low} ".split(" and ") if part.strip()]
                for n, name in enumerate(names):
                    words = name.split()
                    if not words:
                        continue
                    head, last = words[:-1], words[-1]
                    forms = [name]
                    if _singular(last) not in _NOT_SINGULAR:
                        forms.append(" ".join([*head, _singular(last)]))
                    if key in ("category", "subcategory"):
                        forms.append(" ".join([*head, _plural(last)]))
                    for form in forms:
                        self._add(form, key, (value,), exact=True, part=n > 0)
                words = low.split()
                if key == "category" and len(words) > 1:
                    # "shoes" / "shoe" -> every "... Shoes" category
                    if words[-1] not in _GENERIC_LAST_WORDS:
                        self._add(words[-1], key, (value,), exact=False)
                        if _singular(words[-1]) not in _NOT_SINGULAR:
                            self._add(_singular(words[-1]), key, (value,), exact=False)
                    self._add(low.replace(" ", ""), key, (value,), exact=True)
            for phrase, targets in SYNONYMS.get(key, {}).items():
                have = tuple(t for t in targets if t in vocab.get(key, []))
                self._add(phrase, key, have, exact=False)
        self._max_words = max((len(p.split()) for p in self._phrases), default=1)
        # Typo candidates: single-word phrases, by their sorted letters (a swap keeps them).
        self._typo_index: dict[str, list[str]] = {}
        for phrase in self._phrases:
            if " " not in phrase and phrase.isalpha() and len(phrase) >= _TYPO_MIN:
                self._typo_index.setdefault("".join(sorted(phrase)), []).append(phrase)

    def _typo(self, token: str) -> str | None:
        """The vocabulary word ``token`` is a letter swap away from, if exactly one."""
        if len(token) < _TYPO_MIN or not token.isalpha() or token in _NOT_TYPOS:
            return None
        found = [p for p in self._typo_index.get("".join(sorted(token)), [])
                 if _swapped(token, p)]
        return found[0] if len({self._phrases[p] for p in found}) == 1 else None

    def parse(self, text: str) -> ParsedQuery:
        """Reads constraints from ``text``.

        Args:
            text: A shopper's message, e.g. "blue jeans for men between 500 and 1500".

        Returns:
            The filters, boosts and the remaining words for the embedding.
        """
        low = _POSSESSIVE.sub("", text.lower())
        matches: list[Match] = []
        price_min: float | None = None
        price_max: float | None = None
        for pattern, kind in _PRICE_PATTERNS:
            for m in list(pattern.finditer(low)):
                nums = [_to_number(m.group(i), m.group(i + 1))
                        for i in range(1, m.re.groups + 1, 2) if m.group(i)]
                if not nums:
                    continue
                if kind == "range" and len(nums) == 2:
                    price_min, price_max = min(nums), max(nums)
                elif kind == "max":
                    price_max = nums[0]
                elif kind == "min":
                    price_min = nums[0]
                elif kind == "around":
                    price_min, price_max = nums[0] * 0.8, nums[0] * 1.2
                else:
                    continue
                matches.append(Match(m.group(0).strip(), "price", (f"{kind} {nums}",)))
                low = low[:m.start()] + " " * (m.end() - m.start()) + low[m.end():]
        in_stock = None
        if _NO_STOCK.search(low):
            in_stock = False
            low = _NO_STOCK.sub(" ", low)
        elif _STOCK.search(low):
            in_stock = True
            low = _STOCK.sub(" ", low)

        tokens = _WORD.findall(low)
        include: dict[str, list[str]] = {}
        exclude: dict[str, list[str]] = {}
        boosts: dict[str, list[str]] = {}
        previous: tuple[Match, int] | None = None  # the last match and where it ended
        consumed: set[int] = set()
        i = 0
        while i < len(tokens):
            for size in range(min(self._max_words, len(tokens) - i), 0, -1):
                phrase = " ".join(tokens[i:i + size])
                hit = self._phrases.get(phrase)
                if hit is None and size == 1:
                    corrected = self._typo(phrase)
                    hit = self._phrases[corrected] if corrected else None
                if hit is None:
                    continue
                key, values = hit
                # "not red", "anything but red", "not in red"
                negated = i > 0 and (tokens[i - 1] in _NEGATIONS or (
                    i > 1 and ((tokens[i - 1] == "but" and tokens[i - 2] in _ALL_BUT)
                               or (tokens[i - 1] == "in" and tokens[i - 2] in _NEGATIONS))))
                if not negated and previous is not None:
                    last, end = previous
                    negated = (last.negated and last.key == key
                               and all(t in _LIST_WORDS for t in tokens[end:i]))
                match = Match(phrase, key, values, negated)
                matches.append(match)
                consumed.update(range(i, i + size))
                previous = (match, i + size)
                if key in SOFT_KEYS and not negated:
                    boosts.setdefault(key, []).extend(values)
                elif key in HARD_KEYS:
                    (exclude if negated else include).setdefault(key, []).extend(values)
                i += size
                break
            else:
                i += 1
        # "shoes" (subcategory) together with "sports shoes" (category): the finer one wins.
        if "category" in include and "subcategory" in include:
            include.pop("subcategory")
        filters = Filters(
            include={k: tuple(dict.fromkeys(v)) for k, v in include.items()},
            exclude={k: tuple(dict.fromkeys(v)) for k, v in exclude.items()},
            price_min=price_min, price_max=price_max, in_stock=in_stock)
        residual = " ".join(_WORD.findall(low))
        free = " ".join(t for j, t in enumerate(tokens)
                        if j not in consumed and t not in _FILLER and t not in _NEGATIONS
                        and t not in _LIST_WORDS)
        return ParsedQuery(text=residual, free_text=free, filters=filters,
                           boosts={k: tuple(dict.fromkeys(v)) for k, v in boosts.items()},
                           matches=tuple(matches))

    def describe(self) -> dict[str, Any]:
        return {"phrases": len(self._phrases)}


def _to_number(digits: str, thousands: str | None) -> float:
    value = float(digits.replace(",", "")) if digits.count(",") and "." not in digits else \
        float(digits.replace(",", "."))
    return value * 1000 if thousands else value
