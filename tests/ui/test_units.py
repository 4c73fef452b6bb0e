"""The app's pure parts: password hashes, accounts, roles, throttling, chips, display, uploads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ui import chips, display, uploads
from ui.access import allowed, oidc_role, visible_pages
from ui.passwords import (
    PasswordHashError,
    Throttle,
    authenticate,
    hash_password,
    load_users,
    parse_hash,
    verify_password,
)

FAST = {"n": 2**10}


def test_password_hashes_verify_and_are_salted():
    first, second = hash_password("s3cret-pass", **FAST), hash_password("s3cret-pass", **FAST)
    assert first.startswith("scrypt$1024$8$1$") and first != second
    assert verify_password("s3cret-pass", first) and verify_password("s3cret-pass", second)
    assert not verify_password("s3cret-pasS", first)
    with pytest.raises(ValueError, match="at least 8"):
        hash_password("short")


@pytest.mark.parametrize("bad", ["", "plain", "scrypt$1024$8$1$!!$AAAA",
                                 "scrypt$3$8$1$c2FsdA==$" + "A" * 44,
                                 "scrypt$1073741824$8$1$c2FsdA==$" + "A" * 44,
                                 "bcrypt$1024$8$1$c2FsdA==$" + "A" * 44])
def test_malformed_or_hostile_hashes_never_match(bad):
    with pytest.raises(PasswordHashError):
        parse_hash(bad)
    assert not verify_password("anything", bad)


def test_users_come_from_secrets_and_the_environment():
    hashed = hash_password("password-1", **FAST)
    env = {"SHOPASSIST_USERS": json.dumps({"bob": {"password_hash": hashed,
                                                   "role": "Analyst"}})}
    users = load_users({"alice": {"password_hash": hashed, "role": "staff"}}, env)
    assert {u.name: u.role for u in users.values()} == {"alice": "staff", "bob": "analyst"}
    assert "scrypt" not in repr(users["alice"])
    assert authenticate(users, " alice ", "password-1") == users["alice"]
    assert authenticate(users, "alice", "password-2") is None
    assert authenticate(users, "nobody", "password-1") is None
    with pytest.raises(ValueError, match="role"):
        load_users({"eve": {"password_hash": hashed, "role": "root"}}, {})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_users({}, {"SHOPASSIST_USERS": "{nope"})
    with pytest.raises(PasswordHashError):
        load_users({"eve": {"password_hash": "x", "role": "staff"}}, {})
    assert load_users(None, {}) == {}


def test_roles_and_pages():
    assert allowed("staff", "support") and not allowed("staff", "insights")
    assert allowed("analyst", "insights") and not allowed("analyst", "support")
    assert allowed("admin", "support") and allowed("admin", "insights")
    assert not allowed(None, "support") and not allowed("none", "insights")
    assert visible_pages(None) == ["shop", "support", "insights"]
    assert visible_pages("staff") == ["shop", "support"]
    assert visible_pages("analyst") == ["shop", "insights"]
    assert visible_pages("none") == ["shop"]


def test_oidc_roles_need_a_listed_verified_email():
    access = {"staff": ["Ann@Shop.example"], "admin": "boss@shop.example"}
    assert oidc_role({"email": "ann@shop.example"}, access) == "staff"
    assert oidc_role({"email": "boss@shop.example", "email_verified": True}, access) == "admin"
    assert oidc_role({"email": "ann@shop.example", "email_verified": False}, access) is None
    assert oidc_role({"email": "x@shop.example"}, access) is None
    assert oidc_role({}, access) is None


def test_throttle_waits_longer_after_each_failure():
    now = [0.0]
    throttle = Throttle(free=2, base_wait=1.0, max_wait=4.0, clock=lambda: now[0])
    assert [throttle.failed("u") for _ in range(6)] == [0.0, 0.0, 1.0, 2.0, 4.0, 4.0]
    assert throttle.wait_left("u") == 4.0 and throttle.wait_left("other") == 0.0
    now[0] = 4.5
    assert throttle.wait_left("u") == 0.0
    throttle.succeeded("u")
    assert throttle.failed("u") == 0.0


@dataclass
class FakeMatch:
    phrase: str
    key: str


@dataclass
class FakeParsed:
    matches: list[FakeMatch] = field(default_factory=list)


class FakeParser:
    """Reads "red" (colour), "dress" (category), "for women" and "under 80" (price)."""

    def parse(self, text: str) -> FakeParsed:
        low = text.lower()
        found = [FakeMatch(p, k) for p, k in [("red", "colour"), ("dress", "category"),
                                              ("women", "gender"), ("under 80", "price")]
                 if p in low]
        return FakeParsed(found)


@pytest.mark.parametrize(("chip", "key"), [("colour: Red", "colour"), ("price ≤ 80", "price"),
                                           ("price 10–80", "price"), ("in stock", "in_stock"),
                                           ("colour: not Black", "colour"),
                                           ("subcategory: Shoes", "subcategory")])
def test_chip_keys(chip, key):
    assert chips.chip_key(chip) == key


def test_removing_a_chip_drops_its_words_and_explicit_filter():
    args = {"query": "red dress for women under 80", "k": 6,
            "filters": {"colour": ["Red"], "in_stock": True}}
    out = chips.without_chip("text_search", args, "colour: Red", FakeParser())
    assert out == {"query": "dress for women under 80", "k": 6, "filters": {"in_stock": True}}
    out = chips.without_chip("text_search", args, "price ≤ 80", FakeParser())
    assert out["query"] == "red dress for women"
    out = chips.without_chip("text_search", args, "gender: Women", FakeParser())
    assert out["query"] == "red dress under 80"
    assert chips.without_chip("text_search", {"query": "dress"}, "category: Dresses",
                              FakeParser()) is None
    photo = chips.without_chip("visual_search", {"upload_id": "upload-1", "refine": "red"},
                               "colour: Red", FakeParser())
    assert photo == {"upload_id": "upload-1"}
    assert chips.without_chip("recommend", {"product_id": "1"}, "colour: Red",
                              FakeParser()) is None
    attrs = chips.without_chip("text_search", {"query": "shirt", "filters": {
        "attributes": {"season": ["Summer"], "usage": ["Casual"]}}}, "season: Summer",
        FakeParser())
    assert attrs["filters"] == {"attributes": {"usage": ["Casual"]}}


def test_display_photos_prefer_the_larger_copy(tmp_path: Path):
    own = tmp_path / "own.jpg"
    own.write_bytes(b"x")
    larger = tmp_path / "big"
    larger.mkdir()
    (larger / "42.jpg").write_bytes(b"x")
    assert display.display_image("42", str(own), larger) == str(larger / "42.jpg")
    assert display.display_image("43", str(own), larger) == str(own)
    assert display.display_image("../42", str(own), larger) == str(own)
    assert display.display_image("43", str(tmp_path / "missing.jpg"), larger) is None
    assert display.display_image("43", "https://cdn.example/p.jpg", None) == \
        "https://cdn.example/p.jpg"
    assert display.display_dir({"SHOPASSIST_DISPLAY_IMAGES_DIR": str(larger)}) == larger
    assert display.display_dir({"SHOPASSIST_DISPLAY_IMAGES_DIR": ""}) is None


def test_catalog_text_is_literal_markdown():
    escaped = display.md_escape("**Sale** [click](https://evil.example) <b>x</b> #1")
    assert "[click]" not in escaped and "**" not in escaped and "<b>" not in escaped
    assert escaped.replace("\\", "") == "**Sale** [click](https://evil.example) <b>x</b> #1"
    assert display.price_label(1299.0, "INR", synthetic=True) == "1,299 INR (demo price)"
    assert display.price_label(12.5, "EUR") == "12.50 EUR"
    assert display.price_label(None, "EUR") == "price on request"
    assert display.card_facts({"category": "Dresses", "colour": "Red", "in_stock": False}) == \
        ["Dresses", "Red", "out of stock"]


def test_upload_prechecks():
    assert uploads.precheck([("a.jpg", 10)], 100) is None
    assert "at most 4" in uploads.precheck([("a.jpg", 1)] * 5, 100)
    assert "MB" in uploads.precheck([("a.jpg", 101)], 100)
    assert "empty" in uploads.precheck([("a.jpg", 0)], 100)
