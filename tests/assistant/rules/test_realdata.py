"""The rules planner on the shared real fashion catalog (skipped when it is absent)."""

from __future__ import annotations

import csv

import pytest

from assistant.session import Session
from assistant.tools import ShopTools
from tests.assistant.rules.conftest import Driver
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
FASHION = SHARED_DATA / "fashion"


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory, offline_profile):
    """~300 rows of the 5k subset: every dress in it, the rest in file order."""
    from retrieval.config import Settings
    from retrieval.ingest import ingest
    from retrieval.search import SearchEngine

    with (FASHION / "catalog_5k.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    dresses = [r for r in rows if r["articleType"] == "Dresses"]
    others = [r for r in rows if r["articleType"] != "Dresses"][:300 - len(dresses)]
    chosen = dresses + others
    for row in chosen:
        row["image"] = str(FASHION / row["image"])
    folder = tmp_path_factory.mktemp("rules-realdata")
    path = folder / "slice.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    settings = Settings(index_dir=folder / "index", device="cpu", batch_size=32)
    report = ingest(path, settings=settings, profile=offline_profile, progress=False)
    assert report.products == len(chosen)
    return SearchEngine.open(settings=settings, profile=offline_profile)


def test_red_dress_for_women_under_1500(real_engine) -> None:
    from assistant.rules.planner import RulesChatModel

    driver = Driver(RulesChatModel(engine=real_engine), ShopTools(real_engine, Session()))
    products = real_engine.products
    wanted = [p for p in products if (p.category, p.attributes.get("colour"),
                                      p.attributes.get("gender")) == ("Dresses", "Red", "Women")]
    assert any(p.price <= 1500 for p in wanted) and any(p.price > 1500 for p in wanted)
    turn = driver.say("red dress for women under 1500")
    assert turn.calls == [("text_search", {"query": "red dress for women under 1500", "k": 5})]
    result = turn.results[0]
    assert result["results"] and "relaxed" not in result
    for row in result["results"]:
        product = real_engine.product(row["id"])
        assert (product.category, product.attributes["colour"], product.attributes["gender"]) \
            == ("Dresses", "Red", "Women")
        assert product.price <= 1500
    assert turn.answer.startswith('Top ')
    assert "colour: Red" in turn.answer.splitlines()[0]
