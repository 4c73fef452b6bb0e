"""The Shop page: chat with photos, product cards, filter chips, a cart.

Everything the shopper does goes through their own :class:`~assistant.agent.Conversation`:
messages through ``turn`` (the agent and its tools log searches and impressions), card
buttons through ``act`` (same tools, same logging) and ``feedback``. The page only renders.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from assistant.agent import Conversation, ShopAssistant, TurnResult
from assistant.eventlog.store import best_effort
from retrieval.images import ImageError
from ui.chips import SEARCH_TOOLS, without_chip
from ui.display import card_facts, display_dir, display_image, md_escape, price_label, why_label
from ui.resources import session_conversation, shared_assistant
from ui.uploads import PHOTO_TYPES, precheck, thumbnail

logger = logging.getLogger(__name__)

STATE_KEY = "shop_state"
CONVERSATION_KEY = "shop_conversation"
COLUMNS = 3
RECOMMEND_K = 6
CARD_TURNS = 4  # older result lists are listed by title (keeps reruns fast)
SORRY = "Sorry, something went wrong on our side. Please try again."


@dataclass
class Entry:
    """One chat bubble and the result list it carries."""

    id: int
    role: str
    text: str = ""
    photos: list[bytes] = field(default_factory=list)
    products: list[dict[str, Any]] = field(default_factory=list)
    query_id: str | None = None
    filters: list[str] = field(default_factory=list)
    relaxed: list[str] = field(default_factory=list)
    search: tuple[str, dict[str, Any]] | None = None  # the search behind the chips
    searched: bool = False
    note: str = ""


@dataclass
class CartItem:
    product_id: str
    title: str
    price: float | None
    currency: str
    synthetic: bool
    query_id: str | None


@dataclass
class ShopState:
    """What one browser session holds (never shared between sessions)."""

    entries: list[Entry] = field(default_factory=list)
    cart: dict[str, CartItem] = field(default_factory=dict)
    camera_used: str | None = None
    toast: str | None = None
    next_id: int = 0

    def add(self, role: str, **fields: Any) -> Entry:
        entry = Entry(id=self.next_id, role=role, **fields)
        self.next_id += 1
        self.entries.append(entry)
        return entry

    def entry(self, entry_id: int) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)


def _state() -> ShopState:
    state = st.session_state.get(STATE_KEY)
    if not isinstance(state, ShopState):
        state = ShopState()
        st.session_state[STATE_KEY] = state
    return state


def _context() -> tuple[ShopAssistant, Conversation, ShopState]:
    assistant = shared_assistant()
    conversation = session_conversation(CONVERSATION_KEY, assistant)
    return assistant, conversation, _state()


# -- turning results into entries -------------------------------------------------------------


def _last_search(conversation: Conversation, result: TurnResult
                 ) -> tuple[str, dict[str, Any]] | None:
    called = [tc.name for tc in result.tool_calls if tc.error is None]
    last = conversation.session.last
    if last is None or last.tool not in SEARCH_TOOLS or last.tool not in called:
        return None
    return last.tool, dict(last.arguments)


def _result_entry(state: ShopState, conversation: Conversation, result: TurnResult,
                  text: str) -> Entry:
    searched = any(tc.name in ("visual_search", "text_search", "recommend")
                   for tc in result.tool_calls)
    note = ""
    if result.fallback_reason:
        note = "The language model failed on this message; the built-in assistant answered."
    return state.add("assistant", text=text, products=list(result.products),
                     query_id=result.query_ids[-1] if result.query_ids else None,
                     filters=list(result.filters), relaxed=list(result.relaxed),
                     search=_last_search(conversation, result), searched=searched, note=note)


TOOL_STATUS = {"visual_search": "Looking for products like your photo...",
               "text_search": "Searching the catalog...",
               "recommend": "Finding recommendations...",
               "product_details": "Reading the product's details...",
               "compare": "Comparing products..."}


def run_turn(state: ShopState, conversation: Conversation, text: str,
             uploads: list[Any], on_event: Callable[[dict[str, Any]], None] | None = None
             ) -> None:
    """Sends one message (words and photos) and records the bubbles it makes;
    ``on_event`` sees the turn's progress (tools called, answer tokens) as it happens."""
    limits = conversation.assistant.engine.limits
    problem = precheck([(f.name, int(f.size)) for f in uploads], limits.max_bytes)
    user = state.add("user", text=text)
    if problem:
        state.add("assistant", text=problem, note="error")
        return
    try:
        result = conversation.turn(text, photos=[f.getvalue() for f in uploads],
                                   on_event=on_event)
    except ImageError as exc:
        state.add("assistant", text=f"That photo can't be used: {exc}", note="error")
        return
    except Exception:
        logger.exception("turn failed")
        state.add("assistant", text=SORRY, note="error")
        return
    if uploads:
        photos = list(conversation.session.uploads.values())[-len(uploads):]
        user.photos = [thumbnail(p) for p in photos]
    _result_entry(state, conversation, result, result.answer)


# -- button callbacks (run before the next script run) --------------------------------------


def _feedback(conversation: Conversation, kind: str, product_id: str,
              query_id: str | None, value: float | None = None) -> bool:
    recorded = False
    with best_effort(f"{kind} feedback"):  # the log must never break the shop
        conversation.feedback(kind, product_id=product_id, query_id=query_id, value=value)
        recorded = True
    return recorded


def _on_feedback(entry_id: int, product_id: str, kind: str) -> None:
    _, conversation, state = _context()
    entry = state.entry(entry_id)
    if entry is not None:
        _feedback(conversation, kind, product_id, entry.query_id)
        state.toast = "Thanks for the feedback!"


def _on_cart(entry_id: int, product: dict[str, Any]) -> None:
    assistant, conversation, state = _context()
    entry = state.entry(entry_id)
    query_id = entry.query_id if entry else None
    pid = str(product["id"])
    _feedback(conversation, "add_to_cart", pid, query_id)
    state.cart[pid] = CartItem(pid, str(product.get("title", pid)), product.get("price"),
                               str(product.get("currency") or ""),
                               _synthetic(assistant, pid), query_id)
    state.toast = "Added to your cart."


def _on_recommend(entry_id: int, product: dict[str, Any], mode: str) -> None:
    _, conversation, state = _context()
    entry = state.entry(entry_id)
    pid = str(product["id"])
    _feedback(conversation, "click", pid, entry.query_id if entry else None)
    title = md_escape(product.get("title", pid))
    lead = f"Similar to **{title}**:" if mode == "similar" else f"Goes with **{title}**:"
    try:
        result = conversation.act("recommend", {"product_id": pid, "mode": mode,
                                                "k": RECOMMEND_K})
    except Exception as exc:
        logger.warning("recommend failed: %s", exc)
        state.add("assistant", text=f"I couldn't find more for {title}.", note="error")
        return
    if not result.products:
        relation = "similar to" if mode == "similar" else "to go with"
        state.add("assistant", text=f"I found nothing {relation} **{title}**.")
        return
    _result_entry(state, conversation, result, lead)


def _on_chip(entry_id: int, chip: str) -> None:
    assistant, conversation, state = _context()
    entry = state.entry(entry_id)
    if entry is None or entry.search is None:
        return
    tool, arguments = entry.search
    args = without_chip(tool, arguments, chip, assistant.engine.parser)
    if args is None:
        state.add("assistant", text=f"Without {md_escape(chip)} there is nothing left to "
                  "search for; tell me what you're looking for.")
        return
    try:
        result = conversation.act(tool, args)
    except Exception as exc:
        logger.warning("search without %s failed: %s", chip, exc)
        state.add("assistant", text=SORRY, note="error")
        return
    _result_entry(state, conversation, result, f"Without *{md_escape(chip)}*:")


def _on_remove(product_id: str) -> None:
    _state().cart.pop(product_id, None)


def _on_checkout() -> None:
    _, conversation, state = _context()
    for item in state.cart.values():
        _feedback(conversation, "purchase", item.product_id, item.query_id, item.price)
    count = len(state.cart)
    state.cart.clear()
    state.toast = f"Order placed ({count} item{'s' if count != 1 else ''}). This is a demo: " \
        "nothing is charged."


def _synthetic(assistant: ShopAssistant, product_id: str) -> bool:
    try:
        product = assistant.engine.product(product_id)
    except KeyError:
        return False
    return product.attributes.get("price_source") == "synthetic"


# -- rendering ------------------------------------------------------------------------------


def _card(assistant: ShopAssistant, entry: Entry, rank: int, product: dict[str, Any],
          folder: Any) -> None:
    pid = str(product["id"])
    try:
        own = assistant.engine.product(pid).image
    except KeyError:
        own = None
    with st.container(border=True, key=f"card-{entry.id}-{rank}"):
        image = display_image(pid, own, folder)
        if image:
            st.image(image, width="stretch")
        st.markdown(f"**{md_escape(product.get('title', pid))}**")
        st.markdown(md_escape(price_label(product.get("price"), product.get("currency"),
                                          synthetic=_synthetic(assistant, pid))))
        facts = card_facts(product)
        if facts:
            st.caption(" · ".join(md_escape(f) for f in facts))
        why = why_label(product.get("why"))
        if why:
            st.caption(f"Why: {md_escape(why)}")
        key = f"{entry.id}-{rank}"
        with st.container(horizontal=True, gap="small"):
            st.button("Similar", key=f"sim-{key}", on_click=_on_recommend,
                      args=(entry.id, product, "similar"))
            st.button("Goes with", key=f"with-{key}", on_click=_on_recommend,
                      args=(entry.id, product, "complementary"))
        with st.container(horizontal=True, gap="small"):
            st.button("Add to cart", key=f"cart-{key}", on_click=_on_cart,
                      args=(entry.id, product), type="primary")
            st.button("", icon=":material/thumb_up:", key=f"up-{key}",
                      on_click=_on_feedback, args=(entry.id, pid, "thumbs_up"),
                      help="Good match")
            st.button("", icon=":material/thumb_down:", key=f"down-{key}",
                      on_click=_on_feedback, args=(entry.id, pid, "thumbs_down"),
                      help="Not for me")


def _chips(entry: Entry) -> None:
    if not entry.filters:
        return
    removable = entry.search is not None
    st.caption("Filters" + (" (click one to remove it):" if removable else ":"))
    with st.container(horizontal=True, gap="small"):
        for i, chip in enumerate(entry.filters):
            if removable:
                st.button(f"✕ {chip}", key=f"chip-{entry.id}-{i}", on_click=_on_chip,
                          args=(entry.id, chip), help=f"Search again without {chip}")
            else:
                st.caption(md_escape(chip))


def _render_entry(assistant: ShopAssistant, entry: Entry, *, cards: bool, folder: Any
                  ) -> None:
    with st.chat_message(entry.role):
        if entry.photos:
            st.image(entry.photos, width=120)
        if entry.text:
            if entry.note == "error":
                st.warning(entry.text)
            elif entry.role == "user":
                st.markdown(md_escape(entry.text))
            else:
                st.markdown(entry.text)  # HTML is never rendered (and already stripped)
        if entry.note and entry.note != "error":
            st.caption(entry.note)
        if entry.relaxed:
            st.info("Nothing matched every constraint, so I dropped: "
                    + ", ".join(entry.relaxed) + ".")
        if entry.searched and not entry.products:
            st.info("No products matched."
                    + (" Try removing one filter:" if entry.filters else
                       " Try fewer or different words, or another photo."))
        _chips(entry)
        if not entry.products:
            return
        if not cards:
            st.caption("Shown: " + "; ".join(md_escape(p.get("title", p.get("id")))
                                              for p in entry.products))
            return
        columns = st.columns(COLUMNS)
        for rank, product in enumerate(entry.products):
            with columns[rank % COLUMNS]:
                _card(assistant, entry, rank, product, folder)


def _cart(state: ShopState) -> None:
    with st.sidebar:
        st.subheader(f"Cart ({len(state.cart)})")
        if not state.cart:
            st.caption("Your cart is empty.")
            return
        totals: dict[str, float] = {}
        for item in state.cart.values():
            line, remove = st.columns([4, 1])
            price = price_label(item.price, item.currency, synthetic=item.synthetic)
            line.markdown(f"{md_escape(item.title)}  \n{md_escape(price)}")
            remove.button("✕", key=f"rm-{item.product_id}", on_click=_on_remove,
                          args=(item.product_id,), help="Remove from the cart")
            if item.price is not None:
                totals[item.currency] = totals.get(item.currency, 0.0) + item.price
        st.markdown("**Total:** " + ", ".join(md_escape(price_label(v, c))
                                               for c, v in totals.items()))
        st.button("Check out (demo)", key="checkout", on_click=_on_checkout, type="primary")
        st.caption("A demo shop: checking out records a purchase for the assistant to learn "
                   "from; nothing is charged.")


def _camera(state: ShopState) -> Any | None:
    """The camera photo waiting to be sent (``None`` when there is none)."""
    if not st.toggle("Use the camera", key="camera_on"):
        return None
    shot = st.camera_input("Take a photo of something you like", key="camera")
    if shot is None or shot.file_id == state.camera_used:
        return None
    st.caption("Photo ready: it goes with your next message.")
    return shot


def render() -> None:
    """The Shop page."""
    assistant, conversation, state = _context()
    st.title("Shop")
    if assistant.notice or not assistant.uses_llm:
        st.info(assistant.notice or "Answers come from the built-in rule-based assistant "
                "(no language model).", icon="ℹ️")
    if state.toast:
        st.toast(state.toast)
        state.toast = None
    _cart(state)
    if state.entries:
        st.sidebar.caption(f"Conversation id: {conversation.session.conversation_id} "
                           "(quote it to our support team)")
    shot = _camera(state)
    send_shot = shot is not None and st.button("Search with this photo", key="send_shot")
    max_mb = max(1, math.ceil(assistant.engine.limits.max_bytes / 2**20))
    prompt = st.chat_input("Describe what you want, or drop a photo here", key="shop_chat",
                           accept_file="multiple", file_type=PHOTO_TYPES, max_chars=500,
                           max_upload_size=max_mb)
    if not state.entries and not prompt and not send_shot:
        st.caption("Try: *red dress for women under 1500*, or drop a product photo and "
                   "add words like *but in black*.")
    folder = display_dir()
    with_products = [e.id for e in state.entries if e.products]
    recent = set(with_products[-CARD_TURNS:])
    for entry in state.entries:
        _render_entry(assistant, entry, cards=entry.id in recent, folder=folder)
    if not prompt and not send_shot:
        return
    text = (prompt.text or "").strip() if prompt else ""
    uploads = list(prompt.files) if prompt else []
    if shot is not None:
        uploads.append(shot)
        state.camera_used = shot.file_id
    if not text and not uploads:
        return
    start = len(state.entries)
    with st.chat_message("user"):
        bubble = st.empty()
        bubble.markdown(md_escape(text) if text else "*(photo)*")
    progress = st.empty()  # a live bubble, replaced by the turn's own bubbles when done
    with progress.container(), st.chat_message("assistant"):
        status = st.status("Looking through the catalog...", expanded=False)
        live = st.empty()
    tokens: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "tool":
            status.update(label=TOOL_STATUS.get(event["name"], "Looking it up..."))
        elif event["type"] == "token":
            tokens.append(event["text"])
            live.markdown(md_escape("".join(tokens)))
        elif event["type"] == "fallback":
            tokens.clear()
            live.empty()

    run_turn(state, conversation, text, uploads, on_event=on_event)
    progress.empty()
    # Render this turn's bubbles in place (no extra rerun before the cards appear).
    sent = state.entries[start]
    if sent.photos:
        with bubble.container():
            st.image(sent.photos, width=120)
            if text:
                st.markdown(md_escape(text))
    for entry in state.entries[start + 1:]:
        _render_entry(assistant, entry, cards=True, folder=folder)
