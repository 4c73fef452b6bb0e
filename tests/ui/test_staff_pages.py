"""Support and Insights through AppTest: closed without a login set-up, open to the right
role only, and doing their jobs (product questions, conversation look-up, metrics)."""

from __future__ import annotations

import pytest

from tests.ui.conftest import card_keys
from ui.passwords import hash_password

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD, n=2**10)


def users(password_hash: str, **roles: str) -> dict:
    return {name: {"password_hash": password_hash, "role": role} for name, role in roles.items()}


def open_page(at, page: str):
    return at.switch_page(f"views/{page}.py").run()


def log_in(at, name: str, password: str = PASSWORD):
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click()  # the form's submit button
    return at.run()


@pytest.mark.parametrize("page", ["support", "insights"])
def test_staff_pages_refuse_without_a_login_set_up(rules_assistant, new_app, page):
    at = open_page(new_app().run(), page)
    assert not at.exception
    assert any("need a login" in w.value for w in at.warning)
    assert not at.text_input and not at.tabs


def test_staff_log_in_to_support_but_not_with_a_wrong_password(rules_assistant, new_app,
                                                               password_hash):
    at = new_app()
    at.secrets["users"] = users(password_hash, alice="staff")
    open_page(at.run(), "support")
    assert [b.label for b in at.button] == ["Log in"]
    log_in(at, "alice", "wrong password")
    assert any("Wrong user name or password" in e.value for e in at.error)
    assert not at.tabs
    log_in(at, "alice")
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Product questions", "Shopper conversations"]


def test_roles_decide_which_staff_page_opens(rules_assistant, new_app, password_hash):
    at = new_app()
    at.secrets["users"] = users(password_hash, bob="analyst")
    log_in(open_page(at.run(), "insights"), "bob")
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Metrics", "Conversations", "Export"]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        open_page(at, "support")  # an analyst is not staff: Support is not even listed


def test_failed_logins_slow_down(rules_assistant, new_app, password_hash):
    at = new_app()
    at.secrets["users"] = users(password_hash, carol="staff")
    open_page(at.run(), "support")
    for _ in range(4):
        log_in(at, "carol", "nope nope nope")
    log_in(at, "carol")  # even the right password waits now
    assert any("Too many failed attempts" in e.value for e in at.error)
    assert not at.tabs


def test_oidc_users_get_the_role_of_their_verified_email(rules_assistant, new_app):
    at = new_app()
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback",
                          "cookie_secret": "x" * 32, "client_id": "shop",
                          "client_secret": "s", "server_metadata_url":
                          "https://id.example/.well-known/openid-configuration"}
    at.secrets["access"] = {"staff": ["Dana@Shop.example"]}
    at.user = {"is_logged_in": False}
    open_page(at.run(), "support")
    assert [b.label for b in at.button] == ["Log in"] and not at.text_input
    at.user = {"is_logged_in": True, "email": "dana@shop.example", "email_verified": True}
    at.run()
    assert not at.exception
    assert [t.label for t in at.tabs][:1] == ["Product questions"]


def test_support_answers_a_question_from_catalog_fields(rules_assistant, new_app, ui_engine,
                                                        password_hash):
    at = new_app()
    at.secrets["users"] = users(password_hash, alice="staff")
    log_in(open_page(at.run(), "support"), "alice")
    product = ui_engine.products[5]
    finder = next(t for t in at.text_input if t.label == "Product id or title words")
    finder.input(product.product_id)
    next(b for b in at.button if b.label == "Find").click()
    at.run()
    assert not at.exception
    assert at.selectbox(key="support_product").value == product.product_id
    question = next(t for t in at.text_input if t.label == "Question about this product")
    question.input("what colour is it?")
    next(b for b in at.button if b.label == "Ask").click()
    at.run()
    assert not at.exception
    answer = at.chat_message[-1].markdown[0].value
    assert product.attributes["colour"] in answer
    assert "catalog" in answer.lower()


def test_support_and_insights_show_a_shoppers_conversation(rules_assistant, new_app,
                                                           password_hash, event_log):
    shopper = new_app().run()
    shopper.chat_input[0].set_value("black jeans for women")
    shopper.run()
    shopper.button(key=card_keys(shopper)[0]).click().run()
    conversation_id = shopper.session_state["shop_conversation"].session.conversation_id

    staff = new_app()
    staff.secrets["users"] = users(password_hash, erin="admin")
    log_in(open_page(staff.run(), "support"), "erin")
    staff.text_input(key="support_conversation_id").input(conversation_id).run()
    assert not staff.exception
    assert any("black jeans for women" in m.value for m in staff.markdown)
    captions = " ".join(c.value for c in staff.caption)
    assert "added to cart" in captions and "#1" in captions

    open_page(staff, "insights")
    assert not staff.exception
    searches = next(m for m in staff.metric if m.label == "Searches")
    assert searches.value == "1"
    # the search as the model that ordered it: the index's fusion, the added product
    [by_model] = [d.value for d in staff.dataframe if "model" in d.value.columns]
    engine = shopper.session_state["shop_conversation"].assistant.engine
    assert by_model["model"].tolist() == [engine.model_version()]
    assert by_model["searches with add to cart"].tolist() == [1.0]
    staff.selectbox(key="ins_open").select(conversation_id).run()
    assert not staff.exception
    assert any("black jeans for women" in m.value for m in staff.markdown)
