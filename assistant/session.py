"""One shopper's conversation state: uploaded photos by reference, what was shown.

Photos never travel through the model's prompt: an upload is checked once (the same code
path as catalog photos), kept in the session under an id like ``upload-1``, and tools take
that id. The session also remembers the products shown, in order, so "the second one"
and "like it but cheaper" resolve against the previous results of the same conversation,
and which product ids the shopper has seen or typed (the policy layer allows tool calls
only on those).
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from retrieval.images import ImageLimits, ImageSource, load_image

MAX_UPLOADS = 8  # per session; the oldest is forgotten first
_ID_IN_TEXT = re.compile(r"\b[A-Za-z0-9][A-Za-z0-9_-]{2,}\b")


@dataclass
class LastSearch:
    """The last search of the conversation, for refinements ("cheaper", "in black")."""

    tool: str
    arguments: dict[str, Any]
    product_ids: list[str]


@dataclass
class Session:
    """State of one conversation. Not shared between shoppers; safe across threads.

    Attributes:
        conversation_id: The event log's conversation id.
        channel: ``shop`` (shoppers) or ``support`` (staff).
    """

    conversation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    channel: str = "shop"
    uploads: OrderedDict[str, Image.Image] = field(default_factory=OrderedDict)
    shown: list[str] = field(default_factory=list)  # every product shown, oldest first
    last: LastSearch | None = None
    mentioned: set[str] = field(default_factory=set)
    # the shopper's reactions in this conversation, for a promoted ranker's history features
    reactions: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counter: int = 0

    def add_upload(self, source: ImageSource, limits: ImageLimits | None = None) -> str:
        """Checks a photo (size, format, pixel bomb, EXIF) and stores it; returns its id.

        Raises:
            ImageError: The photo is unreadable or refused (the message says why).
        """
        image = load_image(source, limits)
        with self._lock:
            self._counter += 1
            upload_id = f"upload-{self._counter}"
            self.uploads[upload_id] = image
            while len(self.uploads) > MAX_UPLOADS:
                self.uploads.popitem(last=False)
        return upload_id

    def upload(self, upload_id: str) -> Image.Image:
        """The photo behind an upload id.

        Raises:
            KeyError: No such upload in this conversation.
        """
        with self._lock:
            image = self.uploads.get(upload_id)
        if image is None:
            known = ", ".join(self.uploads) or "none"
            raise KeyError(f"No photo {upload_id!r} in this conversation (uploads: {known}).")
        return image

    @property
    def latest_upload(self) -> str | None:
        with self._lock:
            return next(reversed(self.uploads), None) if self.uploads else None

    def remember_results(self, tool: str, arguments: dict[str, Any], product_ids: list[str]
                         ) -> None:
        with self._lock:
            self.shown.extend(p for p in product_ids if p not in self.shown)
            if tool in ("visual_search", "text_search", "recommend"):
                self.last = LastSearch(tool, dict(arguments), list(product_ids))

    def note_user_text(self, text: str, known_ids: set[str] | None = None) -> None:
        """Remembers product ids the shopper typed (only ids that exist, when known)."""
        found = set(_ID_IN_TEXT.findall(text))
        if known_ids is not None:
            found &= known_ids
        with self._lock:
            self.mentioned |= found

    def note_reaction(self, kind: str, product_id: str) -> None:
        """Remembers a click, add to cart or purchase (other feedback is not a history)."""
        flag = {"click": "clicked", "add_to_cart": "added_to_cart",
                "purchase": "purchased"}.get(kind)
        if flag:
            with self._lock:
                self.reactions.append({"product_id": product_id, flag: True})

    def history(self) -> list[dict[str, Any]]:
        """What the shopper reacted to so far (``SearchEngine.search(session=...)``)."""
        with self._lock:
            return [dict(r) for r in self.reactions]

    def allowed_product(self, product_id: str) -> bool:
        """Whether a tool may act on this product: shown to or typed by the shopper."""
        with self._lock:
            return product_id in self.mentioned or product_id in self.shown

    def result_at(self, position: int) -> str | None:
        """The product id at a 1-based position of the last results ("the second one")."""
        with self._lock:
            if self.last is None or not 1 <= position <= len(self.last.product_ids):
                return None
            return self.last.product_ids[position - 1]


def image_bytes(image: Image.Image, format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=90)
    return buffer.getvalue()
