"""The words that tell the planner what a shopper wants, as compiled patterns.

Catalog values (colours, categories, genders, prices) are read by the search engine's
:class:`~retrieval.query.QueryParser`; this module holds only the conversational cues
around them: references ("the second one", "it"), refinements ("cheaper", "in black"),
questions about a product's fields, comparisons, greetings and out-of-scope requests.
Patterns run on lower-cased text.
"""

from __future__ import annotations

import re

ORDINALS: dict[str, int] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
    "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "last": -1, "penultimate": -2,
    "second last": -2, "second to last": -2, "second-to-last": -2, "second-last": -2,
}
COUNTS: dict[str, int] = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4}

# "the first two", "top 3", "last two": a run of positions.
COUNTED = re.compile(r"\b(first|top|last)\s+(two|three|four|[234])\b(?!\s*(?:k\b|[$€£₹]|rs))")
ORDINAL = re.compile(
    r"\b(second[- ]to[- ]last|second[- ]last|penultimate|first|second|third|fourth|fifth|"
    r"sixth|seventh|eighth|ninth|tenth|last|top|\d{1,2}(?:st|nd|rd|th))\b"
    r"(?!\s+(?:time|of all|season|year|month|week|night|order|brand|quality|notch)\b)")
# "#3", "no. 3", "number 3", "item 3": a position, or an id when it is larger.
NUMBERED = re.compile(r"(?:#\s*|\b(?:no\.?|number|num|item|option|result|product|pick)"
                      r"\s*#?\s*)([a-z0-9][a-z0-9_-]{0,39})\b")
BARE_NUMBER = re.compile(r"(?<![\w.#$€£₹])(\d{1,2})(?![\w.%$€£₹])")
ID_TOKEN = re.compile(r"(?<![\w#])[A-Za-z0-9][A-Za-z0-9_-]{2,39}\b")
SINGULAR = re.compile(
    r"\b(?:it|its|this one|that one|this item|that item|this product|that product|"
    r"the one|the same one|this|that(?!\s+(?:is|was|are|has|have|goes|go|would|will|can|"
    r"could|looks?|fits?|comes?|matches?|i|you|we|they)\b))\b")
PLURAL = re.compile(r"\b(?:them|these|those|they|both|all of them|the two|all three)\b")

GREETING = re.compile(
    r"^(?:hi+|hello+|hey+|hiya|howdy|yo|greetings|good (?:morning|afternoon|evening|day)|"
    r"thanks?|thank you|thx|ty|cheers|bye|goodbye|see you|ok(?:ay)?|cool|great|nice|"
    r"perfect|awesome)\b")
HELP = re.compile(
    r"^(?:help|\?+|menu|start)$|\bwhat can you do\b|\bhow (?:does this|do (?:i|you)) "
    r"(?:work|use)|\bwho are you\b|\bwhat do you do\b|\bhow can you help\b|\bwhat are you\b|"
    r"\bhow do i (?:search|start|use)\b|\bhelp me\b(?!\s+(?:find|choose|pick|get))")
OUT_OF_SCOPE = re.compile(
    r"\bweather\b|\bjoke\b|\bpoem\b|\bnews\b|\bpolitic|\brecipe\b|\bcapital of\b|"
    r"\btranslate\b|\bhomework\b|\bstock market\b|\bbitcoin\b|\bcrypto\b|\bwho won\b|"
    r"\bmy order\b|\border status\b|\btrack (?:my|the|an?) (?:order|package|parcel)|"
    r"\brefund|\breturn(?:s|ing|able|ed)?\b|\bexchange\b|\bcancel\b|\bdeliver(?:y|ed)?\b|\bshipping\b|"
    r"\bpassword\b|\bmy account\b|\blog ?in\b|\bsign ?up\b|\bcoupon|\bdiscount code\b|"
    r"\bignore (?:all |any |the )?(?:previous|prior|above|earlier|your) |\bsystem prompt\b|"
    r"\byour (?:prompt|instructions|rules)\b|\bpretend (?:to be|you are)\b|"
    r"\bwrite (?:me )?(?:a |an )?(?:code|program|essay|story|email)\b")

COMPARE = re.compile(
    r"\bcompare\b|\bcomparison\b|\bvs\.?(?!\w)|\bversus\b|\bdifferences?\b|\bdiffer\b|"
    r"\bwhich (?:one |of (?:them|these|those|the \w+) )?(?:is|would be|'s) (?:better|"
    r"cheaper|best|the cheapest|the best|more expensive|nicer)|"
    r"\bwhich (?:one )?should i (?:buy|get|pick|choose)")
GOES_WITH = re.compile(
    r"\bgo(?:es)? (?:well |nicely )?with\b|\bwear (?:\w+ ){0,2}with\b|"
    r"\bpair(?:s|ed)? (?:\w+ ){0,2}with\b|\bmatch(?:es)? (?:well )?with\b|\bwhat matches\b|"
    r"\bmatching\b|\bcomplete (?:the|my|this) (?:look|outfit)\b|\boutfit\b|\bcomplement|"
    r"\bto go with\b|\bteam (?:\w+ )?with\b|\bstyle (?:it|this|that|them) with\b|"
    r"\baccessori[sz]e\b")
SIMILAR = re.compile(
    r"\bsimilar\b|\bmore like\b|\bmore of (?:these|those|this|that|it)\b|"
    r"\b(?:others?|anything|something|items?|ones?|stuff|more|products?) (?:just |a bit )?"
    r"like\b|(?<!\bi )(?<!\bwe )(?<!\bdo )(?<!\breally )(?<!\bwould )\blike "
    r"(?:it|this|that|this one|that one|the \w+(?: one)?|#\s*\w+|no\.? ?\w+|\d{3,})\b|"
    r"\balike\b|\blook-?alikes?\b|\bsame style\b|\bin the same style\b|\brelated\b")
CHEAPER = re.compile(
    r"\bcheaper\b|\bless expensive\b|\blower (?:price|priced|cost)\b|"
    r"\bmore affordable\b|\baffordable\b|\bbudget[- ]friendly\b|"
    r"\btoo (?:expensive|pricey|costly)\b|"
    r"\bcosts? less\b|\bnot so expensive\b|\bless pricey\b|\binexpensive\b")
PRICIER = re.compile(
    r"\bpricier\b|\bmore expensive\b|\bhigher[- ](?:end|priced|price)\b|\bpremium\b|"
    r"\bfancier\b|\bluxury\b|\bcostlier\b|\btoo cheap\b")
# Strong refinement cues: with them, even a new category refines the last search
# ("what about shoes?" keeps its colour, gender and budget).
REFINE = re.compile(
    r"\binstead\b|\bwhat about\b|\bhow about\b|\bany (?:in|for)\b|\banything in\b|"
    r"\bsame (?:but|in|one)\b|\brather\b|\bshow (?:me )?(?:them|those|these|it|one|ones"
    r"|some) (?:in|for)\b|\bdifferent colou?r|\bother colou?rs?\b|\bcomes? in\b|"
    r"\bavailable in\b|\b(?:have|got) (?:it|this|that|them|one|these|those) in\b")
# A short follow-up that starts like a refinement: "with long sleeves", "in black".
LEADING_REFINE = re.compile(
    r"(?:and |but |maybe |preferably |ideally |make it |only |just )?(?:with|without|in|for|"
    r"only|just|no|not|any|except|under|below|over|above|less than|more than|between)\b")
QUESTION = re.compile(
    r"\?\s*$|^(?:is|are|does|do|did|what|what's|whats|how|which|can|could|will|would|"
    r"tell me|any info|info|details?|describe|show me the details|give me)\b")
DETAILS_ALL = re.compile(
    r"\btell me (?:more )?about\b|\bmore (?:info|information|details) (?:on|about)\b|"
    r"\bdetails? (?:of|on|about|for)\b|\bdescribe\b|\bwhat is (?:it|this|that)\b\s*\??$|"
    r"\bmore about\b|\bspecs?\b|\binfo on\b|\bfull details\b")

# A question's words -> the catalog field that answers it; the value words double as the
# value asked about ("is it cotton?" asks material = cotton).
FIELD_WORDS: dict[str, tuple[str, ...]] = {
    "material": ("material", "fabric", "made of", "made from", "cotton", "polyester",
                 "wool", "woollen", "woolen", "silk", "leather", "denim", "linen", "nylon",
                 "rayon", "viscose", "synthetic", "cloth", "lycra", "spandex", "suede"),
    "colour": ("colour", "color", "shade"),
    "season": ("season", "winter", "summer", "fall", "autumn", "spring", "monsoon",
               "rainy", "cold weather", "warm weather", "hot weather"),
    "usage": ("occasion", "office", "work", "party", "wedding", "formal", "casual", "gym",
              "sports", "ethnic", "everyday", "daily wear", "usage", "wear it to",
              "travel", "festive"),
    "price": ("price", "cost", "how much", "expensive", "pricey", "what does it cost"),
    "in_stock": ("in stock", "stock", "available", "availability", "sold out",
                 "buy it now", "can i buy", "can i order"),
    "size": ("size", "sizes", "fit", "fits", "measurements", "xl", "xxl", "small",
             "medium", "large"),
    "gender": ("gender", "unisex", "for men", "for women", "for boys", "for girls",
               "for a man", "for a woman", "for ladies", "for kids", "mens", "womens"),
    "category": ("what kind", "what type", "category"),
    "title": ("called", "name of", "brand"),
}
# Value words that are not field names: they are the value asked about.
VALUE_WORDS = frozenset(
    w for f in ("material", "season", "usage") for w in FIELD_WORDS[f]
    if w not in {"material", "fabric", "made of", "made from", "season", "occasion", "usage",
                 "wear it to", "cloth"})

# Words of conversation that say nothing about the product wanted.
_CHATTER_TEXT = """
a an the this that these those it its one ones same like similar but in on of for with to at
by as is are be am was were please pls plz show me my i we you want need looking look find get
buy something some anything any item items product products also just only rather than so very
too can could would will do does did have has got hi hello hey thanks thank there what whats
how which about more less other another else here again now instead please kindly ok okay yes
no not see give let lets tell them they their cheaper cheapest expensive pricier affordable
budget first second third fourth fifth sixth last top next previous option options result
results number item version style kind type sort and or maybe really nice good great cool
price cost costs priced from stuff around up down out if whether where when who all
bye goodbye morning afternoon evening day much lot awesome perfect cheers thx ty hiya
howdy yo later doing today well wow lovely u ur pls come comes available go goes wear
colour colours color colors shade shades
"""
CHATTER = frozenset(_CHATTER_TEXT.split())
