"""PII masking: what is masked, and the shop talk that must survive it."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest

from assistant.eventlog.pii import ADDRESS, CARD, EMAIL, PHONE, luhn_valid, mask, mask_data
from tests.assistant.conftest import luhn_complete

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"


@pytest.mark.parametrize("text, token", [
    ("email me at jane.doe+shop@example.co.uk please", EMAIL),
    ("JOSÉ.garcía@correo.es", EMAIL),
    ("o'brien@mail.ie", EMAIL),
    ("write to jane [at] example [dot] com", EMAIL),
    ("jane(at)example.com", EMAIL),
    (f"card {VISA} thanks", CARD),
    ("card 4111 1111 1111 1111 exp 12/27", CARD),
    ("card 4111-1111-1111-1111", CARD),
    (f"mc {MASTERCARD[:4]} {MASTERCARD[4:8]} {MASTERCARD[8:12]} {MASTERCARD[12:]}", CARD),
    ("amex 3782 822463 10005", CARD),
    (f"13 digits {luhn_complete('422222222222')}", CARD),
    (f"19 digits {luhn_complete('622222222222222222')}", CARD),
    ("size 42 4111 1111 1111 1111", CARD),
    ("call +44 20 7946 0958 now", PHONE),
    ("+1 (415) 555-0132", PHONE),
    ("+442079460958", PHONE),
    ("+49 30 12345678", PHONE),
    ("+33 6 12 34 56 78", PHONE),
    ("0044 20 7946 0958", PHONE),
    ("(415) 555-0132", PHONE),
    ("415-555-0132", PHONE),
    ("415.555.0132", PHONE),
    ("1-800-555-0199", PHONE),
    ("020 7946 0958", PHONE),
    ("07700 900123", PHONE),
    ("07700900123", PHONE),
    ("06 12 34 56 78", PHONE),
    ("030 12345678", PHONE),
    ("call me on 5550132", PHONE),
    ("my mobile: 555 0132 99", PHONE),
    ("reach me at 4155550132", PHONE),
    ("Telefon 030123456", PHONE),
    ("ship to 221B Baker Street, London", ADDRESS),
    ("12 main st apt 4b", ADDRESS),
    ("350 5th Avenue", ADDRESS),
    ("1600 Pennsylvania Ave NW", ADDRESS),
    ("10 Downing St.", ADDRESS),
    ("42 Old Kent Road", ADDRESS),
    ("7 Elm Ln", ADDRESS),
    ("12 Abbey Way", ADDRESS),
    ("99 Sunset Blvd", ADDRESS),
    ("deliver to 12 baker street tomorrow", ADDRESS),
    ("12 rue de la Paix, Paris", ADDRESS),
    ("5bis avenue Victor-Hugo", ADDRESS),
    ("Hauptstraße 5", ADDRESS),
    ("Berliner Str. 12a", ADDRESS),
    ("Kalverstraat 1", ADDRESS),
    ("Calle Mayor 10", ADDRESS),
    ("Via Roma 12", ADDRESS),
    ("Rua Augusta, 100", ADDRESS),
    ("P.O. Box 1234", ADDRESS),
])
def test_masks(text: str, token: str) -> None:
    masked = mask(text)
    assert token in masked, masked
    assert mask(masked) == masked  # idempotent


@pytest.mark.parametrize("text", [
    "red dress for women under 1500",
    "under $80, in red",
    "between 500 and 1500 rupees",
    "Rs. 1,499.00 or 2,999",
    "1500-2000 price range",
    "size 42",
    "EU 42 / UK 8 / US 10",
    "sizes 38 40 42 44 46 48 50",
    "waist 32 length 34",
    "size 42 street style",
    "size 10 urban street shoes",
    "4 way stretch",
    "2 shirts for the road",
    "3 dresses for the park",
    "product 15970",
    "ids 15970, 53759 and 1163",
    "like 15970 but cheaper",
    "SKU 0012345 and 00123456789",
    "summer 2023 collection",
    "from 2019 to 2024",
    "2024-05-01 and 01.02.2024",
    "30% off, pack of 3",
    "order #A12345",
    "not a card 4111 1111 1111 1112",
    "order 1234567890123456",
    "shipping via DHL 2 days",
    "text search for 15970",
    "@home collection",
    "price $12 Street price",
    # A bare 10-digit number with no phone shape and no cue word could be an order number.
    "order 4155550132",
])
def test_keeps_shop_talk(text: str) -> None:
    assert mask(text) == text


def test_non_luhn_16_digits_are_kept() -> None:
    for number in ("1234567890123456", "4111111111111112", "5555 5555 5555 4445"):
        assert not luhn_valid(number.replace(" ", ""))
        assert mask(f"order {number}") == f"order {number}"


def test_luhn() -> None:
    for number in (VISA, MASTERCARD, AMEX, "6011111111111117", "79927398713"):
        assert luhn_valid(number)
    for number in ("4111111111111112", "79927398710", "1234567812345678"):
        assert not luhn_valid(number)


def test_several_kinds_in_one_message() -> None:
    text = ("I'm jane@example.com, card 4111 1111 1111 1111, call +1 415 555 0132, ship to "
            "221B Baker Street — the red dress 15970 in size 42 under 1500")
    masked = mask(text)
    assert masked == (f"I'm {EMAIL}, card {CARD}, call {PHONE}, ship to {ADDRESS} — the red "
                      "dress 15970 in size 42 under 1500")


@dataclasses.dataclass
class _Args:
    note: str
    k: int


def test_mask_data_walks_structures() -> None:
    value = {
        "query": "red dress, mail jane@example.com",
        "k": 5,
        "product_id": 15970,
        "card": int(VISA),
        "card_float": float(VISA),
        "price": 1499.5,
        "nan": math.nan,
        "ok": True,
        "none": None,
        "jane@example.com": "key masked too",
        "nested": [("+44 20 7946 0958", 2024), {"deep": ["12 Baker Street"]}],
        "tags": {"only"},
        "args": _Args(note="call 020 7946 0958", k=3),
    }
    masked = mask_data(value)
    assert masked["query"] == f"red dress, mail {EMAIL}"
    assert masked["k"] == 5 and masked["product_id"] == 15970 and masked["price"] == 1499.5
    assert masked["card"] == CARD
    assert masked["card_float"] == CARD
    assert masked["nan"] is None and masked["ok"] is True and masked["none"] is None
    assert masked[EMAIL] == "key masked too"
    assert masked["nested"] == [[PHONE, 2024], {"deep": [ADDRESS]}]
    assert masked["tags"] == ["only"]
    assert masked["args"] == {"note": f"call {PHONE}", "k": 3}
    assert "jane@example.com" not in repr(masked)


@pytest.mark.parametrize("text", [
    "a@" + "b." * 50_000,
    "a" * 100_000 + "@",
    "x [at] y " + "a" * 100_000,
    "a-" * 50_000 + "straße 5",
    "+" + "1" * 5_000,
    "1 " * 50_000,
    ("12 " + "Aa " * 10) * 5_000,
    ("call " + "( " * 20 + "1") * 5_000,
])
def test_long_inputs_take_linear_time(text: str) -> None:
    # A pattern that may start anywhere inside a long run rescans the run from every
    # position: seconds to minutes on inputs this size. Linear scanning takes milliseconds.
    start = time.perf_counter()
    mask(text)
    assert time.perf_counter() - start < 5.0
