"""The Support page (role staff): find a product, answer questions about it from the
catalog, and look up a shopper's conversation.

Questions go through a ``support``-persona conversation of the staff member's own session,
so answers cite catalog fields and say "not in the catalog" instead of guessing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import streamlit as st

from assistant.agent import Conversation, ShopAssistant
from assistant.tools import ToolInputError
from retrieval.images import ImageError
from ui.access import require
from ui.display import display_dir, display_image, md_escape, price_label
from ui.resources import session_conversation, shared_assistant
from ui.review import render_conversation
from ui.uploads import PHOTO_TYPES, precheck

logger = logging.getLogger(__name__)

CONVERSATION_KEY = "support_conversation"
FOUND_KEY = "support_found"
ANSWERS_KEY = "support_answers"
FIND_K = 8
_PRONOUN = re.compile(r"\b(?:this one|that one|this product|this item|this|that|it)\b",
                      re.IGNORECASE)


def find_products(conversation: Conversation, words: str, photo: Any | None) -> list[str]:
    """Product ids for an id, title words and/or a photo (best first).

    Raises:
        ImageError: The photo cannot be used.
        ToolInputError: The search was refused.
    """
    engine = conversation.assistant.engine
    words = words.strip()
    if words and not photo and words in engine.row_of:
        conversation.session.note_user_text(words, {words})  # typed: questions may use it
        return [words]
    if photo is not None:
        upload = conversation.add_photo(photo.getvalue())
        args: dict[str, Any] = {"upload_id": upload, "k": FIND_K}
        if words:
            args["refine"] = words
        result = conversation.act("visual_search", args)
    else:
        result = conversation.act("text_search", {"query": words, "k": FIND_K})
    return [str(p["id"]) for p in result.products]


def question_text(question: str, product_id: str) -> str:
    """The message sent for a question about the selected product.

    The product id takes the place of the first "this" / "it" ("is this cotton?" → "is
    15970 cotton?"), or is appended: a pronoun beside an id would otherwise be read as a
    reference to an earlier result, and the support conversation may have shown none.
    """
    question = " ".join(question.split())
    if _PRONOUN.search(question):
        return _PRONOUN.sub(product_id, question, count=1)
    return f"{question} (product {product_id})"


def _product_details(assistant: ShopAssistant, product_id: str) -> None:
    product = assistant.engine.product(product_id)
    left, right = st.columns([1, 2])
    image = display_image(product.product_id, product.image, display_dir())
    if image:
        left.image(image, width="stretch")
    synthetic = product.attributes.get("price_source") == "synthetic"
    fields = {"id": product.product_id, "title": product.title, "category": product.category,
              "price": price_label(product.price, product.currency, synthetic=synthetic),
              "in stock": "yes" if product.in_stock else "no",
              **{k: v for k, v in sorted(product.attributes.items())}}
    if product.description:
        fields["description"] = product.description
    right.table({"field": list(fields), "catalog value": [str(v) for v in fields.values()]})


def _product_tab(assistant: ShopAssistant, conversation: Conversation) -> None:
    with st.form("find_product"):
        words = st.text_input("Product id or title words", placeholder="15970 or 'navy blue "
                              "tshirt'")
        photo = st.file_uploader("...or a photo", type=PHOTO_TYPES)
        submitted = st.form_submit_button("Find")
    if submitted:
        problem = precheck([(photo.name, int(photo.size))] if photo else [],
                           assistant.engine.limits.max_bytes)
        if problem:
            st.warning(problem)
        elif not words.strip() and photo is None:
            st.warning("Type an id or some title words, or add a photo.")
        else:
            try:
                st.session_state[FOUND_KEY] = find_products(conversation, words, photo)
            except (ImageError, ToolInputError) as exc:
                st.warning(f"Could not search: {exc}")
            except Exception:
                logger.exception("support search failed")
                st.error("The search failed; try again.")
    found: list[str] = st.session_state.get(FOUND_KEY, [])
    if submitted and not found:
        st.info("No product found.")
    if not found:
        return
    titles = {pid: assistant.engine.product(pid).title for pid in found
              if pid in assistant.engine.row_of}
    product_id = st.selectbox("Product", list(titles), key="support_product",
                              format_func=lambda pid: f"{pid} — {titles[pid]}")
    if product_id is None:
        return
    _product_details(assistant, product_id)
    with st.form("ask"):
        question = st.text_input("Question about this product", placeholder="is this cotton?")
        asked = st.form_submit_button("Ask")
    answers: list[tuple[str, str, str]] = st.session_state.setdefault(ANSWERS_KEY, [])
    if asked and question.strip():
        try:
            result = conversation.turn(question_text(question, product_id))
            answers.append((product_id, question.strip(), result.answer))
        except Exception:
            logger.exception("support question failed")
            st.error("The question could not be answered; try again.")
    for pid, asked_text, answer in reversed(answers[-10:]):
        with st.chat_message("user"):
            st.markdown(f"{md_escape(asked_text)} · product {md_escape(pid)}")
        with st.chat_message("assistant"):
            st.markdown(answer)  # already made safe; HTML is never rendered


def _conversation_tab(assistant: ShopAssistant) -> None:
    if assistant.log is None:
        st.info("The event log is off, so there are no conversations to look up.")
        return
    conversation_id = st.text_input("Conversation id", key="support_conversation_id",
                                    help="Shown to shoppers on request; also in Insights.")
    if not conversation_id.strip():
        return
    try:
        record = assistant.log.conversation(conversation_id.strip())
    except KeyError:
        st.warning("No conversation with that id.")
        return
    render_conversation(record, assistant.engine)


def render() -> None:
    """The Support page."""
    require("support")
    assistant = shared_assistant()
    conversation = session_conversation(CONVERSATION_KEY, assistant, persona="support")
    st.title("Support")
    products, conversations = st.tabs(["Product questions", "Shopper conversations"])
    with products:
        _product_tab(assistant, conversation)
    with conversations:
        _conversation_tab(assistant)
