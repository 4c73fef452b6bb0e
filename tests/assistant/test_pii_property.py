"""Property: personal data planted anywhere a writer accepts text never reaches the disk or logs.

Random shop talk with planted e-mails, phone numbers, Luhn-valid card numbers (several
formats) and street addresses goes through every writer method; then every text column of
every table, the raw bytes of the SQLite file (after a WAL checkpoint) and the captured
DEBUG log output (SQLAlchemy's statement logging included) are searched for each planted
value. Reproduce a failure with the printed seed: ``TEST_SEED=<seed> pytest ...``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import select

from assistant.eventlog.pii import NOT_STREET_NAMES, TOKENS, mask
from assistant.eventlog.schema import metadata
from assistant.eventlog.store import EventLog
from tests.assistant.conftest import luhn_complete

SEED = int(os.environ.get("TEST_SEED", "0")) or random.SystemRandom().randrange(2**31)
_SEPARATORS = re.compile(r"[\s().\-]")


@dataclass(frozen=True)
class Planted:
    """A piece of personal data as written, and what must not be found afterwards."""

    text: str
    needles: tuple[str, ...]
    digit_needles: tuple[str, ...] = ()  # searched with separators removed


def _digits(draw: st.DrawFn, n: int, first: str = "0123456789") -> str:
    head = draw(st.sampled_from(first))
    return head + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=n - 1,
                                        max_size=n - 1)))


@st.composite
def emails(draw: st.DrawFn) -> Planted:
    local = draw(st.from_regex(r"[a-z][a-z0-9._+-]{0,12}[a-z0-9]", fullmatch=True))
    labels = draw(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True),
                           min_size=1, max_size=2))
    tld = draw(st.sampled_from(["com", "org", "co", "de", "io", "shop", "travel"]))
    address = f"{local}@{'.'.join(labels)}.{tld}"
    return Planted(address, (address, f"{local}@"))


@st.composite
def cards(draw: st.DrawFn) -> Planted:
    prefix, lengths = draw(st.sampled_from([
        ("4", (13, 16, 19)), ("51", (16,)), ("55", (16,)), ("2221", (16,)), ("34", (15,)),
        ("37", (15,)), ("6011", (16, 19)), ("35", (16,)), ("62", (16, 17, 18, 19))]))
    length = draw(st.sampled_from(lengths))
    number = luhn_complete(prefix + _digits(draw, length - 1 - len(prefix)))
    style = draw(st.sampled_from(["plain", "spaces", "dashes", "amex"]))
    if style == "amex" and length == 15:
        text = f"{number[:4]} {number[4:10]} {number[10:]}"
    elif style in ("spaces", "dashes"):
        sep = " " if style == "spaces" else "-"
        text = sep.join(number[i:i + 4] for i in range(0, length, 4))
    else:
        text = number
    return Planted(text, (text,), (number,))


@st.composite
def phones(draw: st.DrawFn) -> Planted:
    cc = draw(st.sampled_from(["1", "44", "49", "33", "34", "39", "91", "353", "971"]))
    area = _digits(draw, 3, "23456789")
    d = lambda n: _digits(draw, n)  # noqa: E731
    nz = draw(st.sampled_from("123456789"))
    text = draw(st.sampled_from([
        f"+{cc} {d(2)} {d(4)} {d(4)}", f"+{cc}{d(9)}", f"+{cc}-{area}-{d(3)}-{d(4)}",
        f"+{cc} ({area}) {d(3)}-{d(4)}", f"00{cc} {d(2)} {d(4)} {d(4)}",
        f"({area}) {d(3)}-{d(4)}", f"{area}-{d(3)}-{d(4)}", f"{area}.{d(3)}.{d(4)}",
        f"0{nz}{d(3)} {d(6)}", f"0{nz}{d(1)} {d(4)} {d(4)}", f"0{nz}{d(9)}",
        f"0{nz} {d(2)} {d(2)} {d(2)} {d(2)}", f"0{nz}{d(2)} {d(8)}",
        f"call me on {d(7)}", f"my mobile is {area} {d(7)}"]))
    number = re.sub(r"\D", "", text)
    return Planted(text, (text,), (number,))


_TITLE = st.from_regex(r"[A-Z][a-z]{2,9}", fullmatch=True).filter(
    lambda w: w.lower() not in NOT_STREET_NAMES)


@st.composite
def addresses(draw: st.DrawFn) -> Planted:
    style = draw(st.sampled_from(["en", "en", "en_lower", "fr", "de", "es"]))
    number = str(draw(st.integers(1, 999 if style != "en" else 9999)))
    names = draw(st.lists(_TITLE, min_size=1, max_size=3 if style.startswith("en") else 2))
    if style == "en":
        number += draw(st.sampled_from(["", "", "B"]))
        suffix = draw(st.sampled_from(["Street", "St", "Road", "Rd", "Avenue", "Ave", "Lane",
                                       "Ln", "Boulevard", "Blvd", "Drive", "Dr", "Way", "Court",
                                       "Place", "Terrace", "Crescent", "Close"]))
        unit = draw(st.sampled_from(["", "", ", Apt 4B", " Suite 210", " Flat 3"]))
        text = f"{number} {' '.join(names)} {suffix}{unit}"
        return Planted(text, (text, f"{number} {names[0]}"))
    if style == "en_lower":
        suffix = draw(st.sampled_from(["street", "st", "road", "rd", "avenue", "ave", "lane",
                                       "boulevard", "drive"]))
        street = f"{number} {' '.join(n.lower() for n in names)} {suffix}"
        return Planted(f"ship to {street}", (street, f"{number} {names[0].lower()}"))
    if style == "fr":
        kind = draw(st.sampled_from(["rue", "avenue", "boulevard", "place", "chemin", "allée",
                                     "impasse", "quai"]))
        particle = draw(st.sampled_from(["", "de la ", "du ", "des ", "de "]))
        text = f"{number} {kind} {particle}{' '.join(names)}"
        return Planted(text, (text, f"{number} {kind}"))
    if style == "de":
        suffix = draw(st.sampled_from(["straße", "strasse", "weg", "gasse", "platz", "allee",
                                       "straat", "laan"]))
        text = f"{names[0]}{suffix} {number}{draw(st.sampled_from(['', 'a']))}"
        return Planted(text, (text, f"{names[0]}{suffix} {number}"))
    kind = draw(st.sampled_from(["Calle", "Avenida", "Plaza", "Via", "Piazza", "Rua", "Corso"]))
    particle = draw(st.sampled_from(["", "de ", "del ", "della ", "da "]))
    text = f"{kind} {particle}{' '.join(names)} {number}"
    return Planted(text, (text, f"{names[-1]} {number}"))


planted_values = st.one_of(emails(), cards(), phones(), addresses())
_VOCAB = ["red", "dress", "for", "women", "under", "1500", "size", "42", "EU", "product", "15970",
          "like", "this", "but", "cheaper", "in", "black", "2024", "summer", "shoes", "$80",
          "between", "500", "and", "—", ",", ".", "please", "order", "#A123", "to", "the"]
fillers = st.lists(st.one_of(
    st.sampled_from(_VOCAB),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)),
    max_size=6).map(" ".join)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, list[Planted]]:
    """Shop talk with 1–3 planted values, each set off by spaces as people write them."""
    planted = draw(st.lists(planted_values, min_size=1, max_size=3))
    parts = [draw(fillers)]
    for value in planted:
        parts += [value.text, draw(fillers)]
    return " ".join(parts), planted


def _assert_absent(blob: str, planted: list[Planted], where: str) -> None:
    stripped = _SEPARATORS.sub("", blob)
    for value in planted:
        for needle in value.needles:
            assert needle not in blob, f"{needle!r} found in {where}"
        for needle in value.digit_needles:
            assert needle not in stripped, f"digits {needle!r} found in {where}"


@pytest.fixture
def print_seed(request: pytest.FixtureRequest) -> None:
    print(f"\n[{request.node.name}] hypothesis seed={SEED} (TEST_SEED={SEED} to reproduce)")


@seed(SEED)
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=messages())
def test_mask_removes_planted_values(print_seed: None, message: tuple[str, list[Planted]]
                                     ) -> None:
    text, planted = message
    masked = mask(text)
    _assert_absent(masked, planted, "the masked text")
    assert mask(masked) == masked


def _database_text(log: EventLog) -> str:
    values = []
    with log.reading() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, dict | list):
                        values.append(json.dumps(value, ensure_ascii=False))
                    elif value is not None:
                        values.append(str(value))
    return "\n".join(values)


def _raw_files(db: Path) -> str:
    data = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    return data.decode("utf-8", "replace")


@seed(SEED)
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(messages(), min_size=8, max_size=8),
       short=st.lists(planted_values, min_size=4, max_size=4))
def test_no_planted_value_reaches_the_database_or_the_logs(
        print_seed: None, caplog: pytest.LogCaptureFixture,
        texts: list[tuple[str, list[Planted]]], short: list[Planted]) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy pins its own loggers at WARNING; open them so bound parameters are logged.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    planted = [p for _, values in texts for p in values] + short
    t = [text for text, _ in texts]
    ids = [p.text for p in short]  # one planted value each: fits the short id columns
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "events.sqlite"
        log = EventLog.open(f"sqlite:///{db}")
        try:
            conv = log.start_conversation(channel="shop", user_id=ids[0], session_id=ids[1],
                                          llm_backend=ids[2], meta={"note": t[0], ids[3]: [t[1]]})
            msg = log.log_message(conv, "user", t[0], has_image=True, upload_ref=ids[3],
                                  meta={"why": t[1]})
            log.log_message(conv, "assistant", t[2])
            log.log_tool_call(conv, "text_search",
                              {"query": t[3], "nested": [{"deep": t[4]}, 3], ids[0]: 1},
                              message_id=msg, duration_ms=2.5, error=RuntimeError(t[5]))
            query = log.log_query(
                conversation_id=conv, message_id=msg, text=t[6], image_ref=ids[1],
                filters={"include": {"colour": [t[7]]}, "price_max": 1500},
                hits=[{"product_id": ids[2], "score": 0.5, "scores": {ids[3]: 0.4}},
                      {"product_id": "15970", "score": 0.4}],
                index_version=ids[0], model_version=ids[1])
            log.log_feedback("click", query_id=query, product_id=ids[2])
            log.log_feedback("dwell", query_id=query, product_id="15970", dwell_ms=900)
            with pytest.raises(ValueError) as refused:
                log.log_message(conv, ids[0], t[0])  # the role is PII: refused, masked
            log.checkpoint()
            stored = _database_text(log)
            raw = _raw_files(db)
        finally:
            log.close()
    _assert_absent(stored, planted, "a table")
    _assert_absent(raw, planted, "the SQLite file")
    _assert_absent(caplog.text, planted, "the log output")
    _assert_absent(str(refused.value), planted, "an error message")
    assert any(token in stored for token in TOKENS)
    assert "INSERT INTO messages" in caplog.text  # SQLAlchemy's statements were captured too
    assert "15970" in stored and "1500" in stored  # product ids and prices survive
