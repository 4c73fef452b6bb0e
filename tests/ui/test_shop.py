"""The Shop page through AppTest: photo turns render cards, buttons log feedback, sessions
stay apart, model HTML is never rendered, bad photos get a friendly message."""

from __future__ import annotations

from langchain_core.messages import AIMessage

from assistant.agent import ShopAssistant
from tests.ui.conftest import card_keys, photo_bytes, png_bytes


def send(at, text: str = "", photos: list[tuple[str, bytes, str]] = ()):
    chat = at.chat_input[0]
    for name, data, mime in photos:
        chat.upload(name, data, mime)
    chat.set_value(text)
    return at.run()


def test_a_photo_turn_renders_product_cards(rules_assistant, new_app, ui_engine, event_log):
    at = new_app().run()
    assert not at.exception
    assert any("No language model" in i.value for i in at.info)  # the rules banner
    send(at, "", [("shot.jpg", photo_bytes(ui_engine, 3), "image/jpeg")])
    assert not at.exception
    cards = card_keys(at)
    assert 1 <= len(cards) <= 6
    titles = [m.value for m in at.markdown if m.value.startswith("**")]
    assert any(ui_engine.products[3].title.split()[0] in t for t in titles)
    counts = event_log.counts()
    assert counts["queries"] == 1 and counts["impressions"] == len(cards)


def test_card_buttons_write_feedback_and_log_their_results(rules_assistant, new_app,
                                                           ui_engine, event_log):
    at = new_app().run()
    send(at, "red tshirt for men")
    first = card_keys(at)[0]
    at.button(key=first).click().run()
    assert not at.exception
    assert event_log.feedback_counts()["add_to_cart"] == 1
    assert "Cart (1)" in [s.value for s in at.sidebar.subheader]
    similar = first.replace("cart-", "sim-")
    before = event_log.counts()["impressions"]
    at.button(key=similar).click().run()
    assert not at.exception
    assert event_log.feedback_counts()["click"] == 1
    assert event_log.counts()["impressions"] > before  # the similar items were logged
    thumbs = card_keys(at, "up-")[-1]
    at.button(key=thumbs).click().run()
    assert event_log.feedback_counts()["thumbs_up"] == 1
    at.button(key="checkout").click().run()
    assert event_log.feedback_counts()["purchase"] == 1


def test_two_sessions_do_not_see_each_other(rules_assistant, new_app, ui_engine):
    alice, bob = new_app().run(), new_app().run()
    send(alice, "blue jeans", [("me.jpg", photo_bytes(ui_engine, 1), "image/jpeg")])
    alice.button(key=card_keys(alice)[0]).click().run()
    bob.run()
    assert card_keys(alice) and not card_keys(bob)
    assert not bob.chat_message
    assert "Cart (0)" in [s.value for s in bob.sidebar.subheader]
    a = alice.session_state["shop_conversation"]
    b = bob.session_state["shop_conversation"]
    assert a is not b and a.session.conversation_id != b.session.conversation_id
    assert a.session.uploads and not b.session.uploads


def test_html_in_a_model_answer_is_not_rendered(ui_engine, event_log, use_assistant,
                                                 new_app):
    from tests.assistant.test_agent import scripted

    use_assistant(ShopAssistant(ui_engine, llm=scripted([AIMessage(
        content='<script>alert(1)</script><b>Bold</b> <img src=x onerror="alert(2)"> deal')]),
        llm_name="scripted", log=event_log))
    at = send(new_app().run(), "hello")
    assert not at.exception
    bodies = [m.value for m in at.markdown]
    assert any("deal" in b for b in bodies)
    assert not any("<script" in b or "<img" in b or "<b>" in b for b in bodies)
    assert not any(m.allow_html for m in at.markdown)


def test_bad_photos_get_a_friendly_message(rules_assistant, new_app):
    at = new_app().run()
    send(at, "", [("evil.png", b"<svg onload=alert(1)>", "image/png")])
    assert not at.exception
    assert any("can't be used" in w.value for w in at.warning)
    send(at, "", [("huge.png", png_bytes((7000, 7000)), "image/png")])
    assert not at.exception
    assert any("pixel" in w.value for w in at.warning)
    assert not card_keys(at)


def test_filter_chips_can_be_removed(rules_assistant, new_app, event_log):
    at = send(new_app().run(), "blue dress for women under 300")
    assert not at.exception
    labels = [b.label for b in at.button if b.key and b.key.startswith("chip-")]
    assert {"✕ colour: Blue", "✕ category: Dresses", "✕ gender: Women"} <= set(labels)
    assert any(label.startswith("✕ price") for label in labels)
    before = event_log.counts()["queries"]
    next(b for b in at.button if b.label == "✕ colour: Blue").click().run()
    assert not at.exception
    assert event_log.counts()["queries"] == before + 1  # re-run through Conversation.act
    assert any(m.value.startswith("Without") for m in at.markdown)
    after = [b.label for b in at.button if b.key and b.key.startswith("chip-")][len(labels):]
    assert "✕ category: Dresses" in after and not any("colour" in a for a in after)
    newest = card_keys(at)[-1].split("-")[1]  # cart-<entry>-<rank>
    facts = [c.value for c in at.caption if "Dresses" in c.value]
    assert newest != card_keys(at)[0].split("-")[1]
    assert any("Blue" not in f for f in facts)  # dresses of other colours now

def test_relaxed_constraints_are_said(rules_assistant, new_app):
    at = send(new_app().run(), "green dress for women under 10")
    assert not at.exception
    assert any("Nothing matched every constraint" in i.value for i in at.info)


def test_a_camera_photo_can_be_searched(rules_assistant, new_app, ui_engine, event_log):
    at = new_app().run()
    at.toggle(key="camera_on").set_value(True).run()
    at.camera_input(key="camera").upload("camera.jpg", photo_bytes(ui_engine, 2)).run()
    assert not at.exception
    at.button(key="send_shot").click().run()
    assert not at.exception
    assert card_keys(at)
    assert event_log.counts()["queries"] == 1
    at.run()  # the same photo is not sent twice
    assert event_log.counts()["queries"] == 1 and not any(b.key == "send_shot"
                                                           for b in at.button)
