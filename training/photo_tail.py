"""Fine-tuning the image encoder's tail for shoppers' photos (the query side only).

Why: :mod:`retrieval.photo_tail`. What it reads:

- shoppers' photos: those of the fusion data (training, validation and test products,
  remade from their seeds) and ``tail_photos`` more of other training products, made the
  same way (:func:`training.photos.shopper_photo`). Each goes once through the encoder's
  trunk; the feature maps and the photo's other image slots (the colour descriptor) are
  cached on disk, like the query encodings;
- every product's stored vectors, which stay as they are.

A photo scores a product as the training-free fusion scores it over the image slots, with
the tuned tail's vector in the tuned slot; the loss is the cross-entropy of the
photographed product against the whole catalog (softmax at ``tail_temperature``). Batch
norm statistics stay the pretrained ones; AdamW with a one-cycle schedule; photo R@1 on
the validation photos after every epoch, the best epoch kept, and no tail at all when no
epoch beats the untuned encoder.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.encoders import IMAGE
from retrieval.encoders.efficientnet import TAIL_FROM
from retrieval.images import ImageError, load_image
from retrieval.photo_tail import PhotoTail
from retrieval.progress import progress
from training.fusion_config import FusionConfig
from training.fusion_data import TRAIN, VALID, FusionData, photos_dir_of
from training.fusion_encode import PHOTO_RECIPE, IndexView, QueryEncoder, digest, load_npz, save_npz
from training.photos import shopper_photo

logger = logging.getLogger(__name__)


class NoTailPhotos(ValueError):
    """No shopper's photo could be made for the photo tail (a catalog without photos)."""


@dataclass
class TailPhotos:
    """Shoppers' photos as the tail sees them, row-aligned.

    ``maps`` are the trunk's feature maps (float16), ``other`` the photo's vectors in the
    other image slots (unit, float16); ``rows`` the photographed products, ``split`` their
    split, ``data`` the position in the fusion data's photos (-1: an extra training photo).
    """

    rows: np.ndarray
    split: np.ndarray
    data: np.ndarray
    maps: np.ndarray
    other: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.rows)


def tunable_slot(encoder: QueryEncoder) -> str | None:
    """The image slot whose encoder can take a fine-tuned tail (EfficientNet), if any."""
    for slot in encoder.loaded.profile.slots:
        if slot.source == IMAGE and hasattr(encoder.loaded.encoder(slot), "with_tail"):
            return slot.name
    return None


@dataclass(frozen=True)
class PhotoList:
    """Shoppers' photos to make: product rows, files, seeds, and each one's position in the
    fusion data's photos (-1: a photo only the tail trains on)."""

    rows: np.ndarray
    sources: list[str]
    seeds: list[list[int]]
    positions: np.ndarray

    @classmethod
    def of(cls, items: list[tuple[int, str, list[int], int]]) -> PhotoList:
        rows, sources, seeds, positions = zip(*items, strict=True) if items else ((), (), (),
                                                                                 ())
        return cls(np.asarray(rows, np.int64), list(sources), list(seeds),
                   np.asarray(positions, np.int64))


def photo_lists(view: IndexView, data: FusionData, config: FusionConfig, *,
                extra: bool = True, splits: tuple[int, ...] = (0, 1, 2)) -> list[PhotoList]:
    """The photos the tail reads, in parts cached apart (changing one setting re-makes only
    its part).

    1. The fusion data's photos of ``splits``, remade from the seeds
       :func:`cached_photo_queries` used (a product's n-th photo is its n-th occurrence),
       then (``extra``) ``tail_photos`` catalog photos of training products the data has
       no photo of.
    2. (``extra``) ``tail_larger_photos`` more shots of every training product's larger
       photo, continuing its numbering.
    """
    photos_dir = photos_dir_of(config)
    first: list[tuple[int, str, list[int], int]] = []
    seen: dict[int, int] = {}
    larger_rows: list[int] = []
    for i, (row, larger) in enumerate(zip(data.photo_rows.tolist(), data.photo_larger.tolist(),
                                          strict=True)):
        augment = seen.get(row, 0)
        seen[row] = augment + 1
        product = view.products[row]
        source = str(photos_dir / f"{product.product_id}.jpg") if larger and photos_dir \
            else product.image
        if larger and augment == 0 and data.split[row] == TRAIN:
            larger_rows.append(row)
        if int(data.split[row]) in splits:
            first.append((row, source, [config.seed, 7, row, augment], i))
    more: list[tuple[int, str, list[int], int]] = []
    if extra and TRAIN in splits:
        if config.tail_photos:
            pool = np.flatnonzero((data.split == TRAIN) & np.array(
                [bool(p.image) for p in view.products]))
            pool = np.setdiff1d(pool, data.photo_rows)
            rng = np.random.default_rng([config.seed, 13])
            for row in np.sort(rng.choice(pool, size=min(config.tail_photos, len(pool)),
                                          replace=False)).tolist():
                first.append((row, view.products[row].image, [config.seed, 13, row, 0], -1))
        for row in larger_rows:
            source = str(photos_dir / f"{view.products[row].product_id}.jpg")
            for augment in range(seen[row], seen[row] + config.tail_larger_photos):
                more.append((row, source, [config.seed, 7, row, augment], -1))
    return [PhotoList.of(first)] + ([PhotoList.of(more)] if more else [])


def tail_photos(view: IndexView, data: FusionData, config: FusionConfig, slot: str,
                cache_dir: Path | None, encoder: Callable[[], QueryEncoder] | None, *,
                extra: bool = True, splits: tuple[int, ...] = (0, 1, 2),
                first: int = TAIL_FROM, show: bool | None = None) -> TailPhotos:
    """The trunk's maps (up to block ``first``) and the other image slots of the photos
    :func:`photo_lists` names, from the cache where they are there.

    Raises:
        FileNotFoundError: Not cached and no ``encoder`` to make them.
        NoTailPhotos: No photo could be made.
    """
    made: Any = None

    def get_encoder() -> QueryEncoder:
        nonlocal made
        if encoder is None:
            raise FileNotFoundError("A photo tail cache is missing and no encoder was given.")
        made = made or encoder()
        return made

    parts = [_trunk_maps(view, part, slot, first, cache_dir, get_encoder, show)
             for part in photo_lists(view, data, config, extra=extra, splits=splits)]
    parts = [p for p in parts if len(p["rows"])]
    if not parts:
        raise NoTailPhotos("No shopper's photo could be made for the photo tail.")
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return _as_photos(arrays, data)


def _trunk_maps(view: IndexView, photos: PhotoList, slot: str, first: int,
                cache_dir: Path | None, encoder: Callable[[], QueryEncoder],
                show: bool | None) -> dict[str, np.ndarray]:
    """One part's arrays (``rows``, ``data``, ``maps``, ``slot.<other>``), cached.

    The key names the index (its encoders' revisions), the photos and the block the maps
    stop before, so a cache is never read for another tail."""
    rows, sources, seeds, positions = photos.rows, photos.sources, photos.seeds, \
        photos.positions
    key = digest([PHOTO_RECIPE, view.key, rows.tolist(), sources, seeds, slot, first])
    path = cache_dir / f"tail-{view.version}-{key}.npz" if cache_dir else None
    if path is not None and (hit := load_npz(path)) is not None:
        logger.info("photo tail: %d photos' maps from cache %s", len(hit["rows"]), path)
        return hit
    enc = encoder()
    profile = enc.loaded.profile
    variants = profile.photo_variants()
    slots = {s.name: s for s in profile.slots if s.source == IMAGE}
    net = enc.loaded.encoder(slots[slot])
    own = variants.index(profile.normaliser_of(slots[slot]))

    def make(i: int) -> list[Image.Image] | None:
        try:
            return enc.prepare(shopper_photo(load_image(sources[i], enc.limits),
                                             np.random.default_rng(seeds[i])))
        except (ImageError, OSError) as exc:
            logger.warning("skipping photo %s: %s", sources[i], exc)
            return None

    started = time.perf_counter()
    kept: list[int] = []
    maps: list[np.ndarray] = []
    other: dict[str, list[np.ndarray]] = {name: [] for name in slots if name != slot}
    chunk = 64
    with ThreadPoolExecutor(max_workers=2) as pool, \
            progress(len(rows), "photo tail: trunk maps", "photo", show) as bar:
        for start in range(0, len(rows), chunk):
            prepared = list(pool.map(make, range(start, min(start + chunk, len(rows)))))
            ok = [j for j, p in enumerate(prepared) if p is not None]
            if ok:
                batch = [prepared[j] for j in ok]
                maps.append(net.trunk(net.pixels([p[own] for p in batch]),  # type: ignore[index]
                                      first).half().numpy())
                for name in other:
                    i = variants.index(profile.normaliser_of(slots[name]))
                    other[name].append(enc.loaded.encoder(slots[name]).encode_images(
                        [p[i] for p in batch]).astype(np.float16))  # type: ignore[index]
                kept.extend(start + j for j in ok)
            bar.update(len(prepared))
    if not kept:
        return {"rows": rows[:0]}
    out = {"rows": rows[kept], "data": positions[kept], "maps": np.concatenate(maps),
           **{f"slot.{k}": np.concatenate(v) for k, v in other.items()}}
    logger.info("photo tail: %d photos through the trunk in %.1f s", len(kept),
                time.perf_counter() - started)
    if path is not None:
        save_npz(path, out)
    return out


def _as_photos(arrays: Mapping[str, np.ndarray], data: FusionData) -> TailPhotos:
    rows = arrays["rows"]
    return TailPhotos(rows, data.split[rows], arrays["data"], arrays["maps"],
                      {k[5:]: v for k, v in arrays.items() if k.startswith("slot.")})


class TailScorer:
    """Scores of photos against every product: the training-free fusion of the image
    slots, the tuned slot from the tail.

    Args:
        products: The products' stored vectors of the image slots.
        slot: The tuned slot.
        weights: The training-free weights of those slots.
    """

    def __init__(self, products: Mapping[str, np.ndarray], slot: str,
                 weights: Mapping[str, float]) -> None:
        self.slot = slot
        self.weights = {s: float(weights[s]) for s in products}
        self.products = {s: F.normalize(torch.from_numpy(v.astype(np.float32)), dim=1)
                         for s, v in products.items()}

    def scores(self, tuned: torch.Tensor, other: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.weights[self.slot] * (tuned @ self.products[self.slot].T)
        for name, vectors in other.items():
            out = out + self.weights[name] * (vectors @ self.products[name].T)
        return out


def _maps(photos: TailPhotos, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photos.maps[idx].astype(np.float32)).contiguous(
        memory_format=torch.channels_last)


def _other(photos: TailPhotos, idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: F.normalize(torch.from_numpy(v[idx].astype(np.float32)), dim=1)
            for k, v in photos.other.items()}


@torch.no_grad()
def tuned_vectors(tail: torch.nn.Module, photos: TailPhotos, idx: np.ndarray | None = None,
                  batch: int = 256) -> np.ndarray:
    """Unit vectors of the tuned slot for ``photos`` (all, or those at ``idx``)."""
    idx = np.arange(len(photos)) if idx is None else idx
    was = tail.training
    tail.eval()
    out = [F.normalize(tail(_maps(photos, idx[i:i + batch])), dim=1).numpy()
           for i in range(0, len(idx), batch)]
    tail.train(was)
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


@torch.no_grad()
def photo_recall(tail: torch.nn.Module, photos: TailPhotos, scorer: TailScorer,
                 idx: np.ndarray, batch: int = 256) -> float:
    """Photo -> same product R@1 over the whole catalog for the photos at ``idx``."""
    if not len(idx):
        return float("nan")
    hits = 0
    for i in range(0, len(idx), batch):
        part = idx[i:i + batch]
        tuned = torch.from_numpy(tuned_vectors(tail, photos, part))
        hits += int((scorer.scores(tuned, _other(photos, part)).argmax(dim=1).numpy()
                     == photos.rows[part]).sum())
    return hits / len(idx)


def train_tail(base: torch.nn.Module, photos: TailPhotos, scorer: TailScorer,
               config: FusionConfig, show: bool | None = None
               ) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """Fine-tunes a copy of ``base`` (the encoder's tail) on the training photos.

    Returns:
        The best epoch's tail, or ``None`` when no epoch beat ``base`` on the validation
        photos; and what happened (validation R@1 per epoch, photos, seconds).
    """
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 17])
    train = np.flatnonzero(photos.split == TRAIN)
    valid = np.flatnonzero(photos.split == VALID)
    # Trained in eval mode: batch norm keeps its pretrained statistics (a batch of 64
    # photos is a poor estimate) while its scales and shifts train with the convolutions;
    # the tail has no dropout.
    tail = copy.deepcopy(base).float().eval()
    params = [p for p in tail.parameters() if p.requires_grad]
    batch = config.tail_batch
    steps_per_epoch = len(train) // batch
    before = photo_recall(tail, photos, scorer, valid)
    history: list[dict[str, Any]] = [{"epoch": 0, "valid_R@1": before}]
    best, best_state, best_epoch = before, None, 0
    info = {"photos": {"train": len(train), "valid": len(valid)}, "history": history}
    if not len(valid):
        logger.info("photo tail: no validation photos to choose an epoch by; no tail")
        return None, {**info, "history": [], "stopped": "no validation photos"}
    if steps_per_epoch < 1:
        logger.info("photo tail: %d training photos, fewer than one batch; no tail", len(train))
        return None, {**info, "stopped": "too few photos"}
    optimizer = torch.optim.AdamW(params, lr=config.tail_lr, weight_decay=0.0)
    total = config.tail_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.tail_lr,
                                                   total_steps=total, pct_start=0.1)
    target = torch.from_numpy(photos.rows)
    stopped = "epochs"
    with progress(total, "photo tail", "step", show) as bar:
        for epoch in range(1, config.tail_epochs + 1):
            order = rng.permutation(train)
            losses = []
            for step in range(steps_per_epoch):
                idx = order[step * batch:(step + 1) * batch]
                tuned = F.normalize(tail(_maps(photos, idx)), dim=1)
                loss = F.cross_entropy(scorer.scores(tuned, _other(photos, idx))
                                       / config.tail_temperature,
                                       target[idx])
                step_loss = float(loss.detach())
                if not math.isfinite(step_loss):
                    raise FloatingPointError(
                        f"The photo tail's loss is {step_loss} at epoch {epoch}, step "
                        f"{step}: training diverged. Lower [train.fusion] tail_lr (now "
                        f"{config.tail_lr}).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(step_loss)
                bar.update(1)
            value = photo_recall(tail, photos, scorer, valid)
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "valid_R@1": value})
            logger.info("photo tail epoch %d: loss %.3f, validation photo R@1 %.3f (untuned "
                        "%.3f)", epoch, np.mean(losses), value, before)
            if value > best:
                best, best_epoch = value, epoch
                best_state = {k: v.detach().clone() for k, v in tail.state_dict().items()}
            if (time.perf_counter() - started) / 60 > config.tail_max_minutes \
                    and epoch < config.tail_epochs:
                stopped = "time budget"
                break
    info.update({"best_epoch": best_epoch, "valid_R@1": best, "untuned_valid_R@1": before,
                 "seconds": round(time.perf_counter() - started, 1), "stopped": stopped})
    if best_state is None:
        logger.info("photo tail: no epoch beat the untuned encoder on validation photos "
                    "(%.3f); the head keeps the untuned one", before)
        return None, info
    tail.load_state_dict(best_state)
    return tail.eval(), info


def _tunable(encoder: QueryEncoder) -> tuple[str, Any] | None:
    slot = tunable_slot(encoder)
    if slot is None:
        return None
    return slot, encoder.loaded.encoder(next(s for s in encoder.loaded.profile.slots
                                             if s.name == slot))


def fit_photo_tail(view: IndexView, data: FusionData, config: FusionConfig,
                   weights: Mapping[str, float], cache_dir: Path | None,
                   encoder: Callable[[], QueryEncoder], show: bool | None = None
                   ) -> tuple[PhotoTail | None, dict[str, Any]]:
    """Trains the photo tail for an index (``data`` is not changed: :func:`use_photo_tail`).

    Returns:
        The tail (``None``: the encoder cannot take one, or no epoch helped) and what
        happened.
    """
    enc = encoder()
    found = _tunable(enc)
    if found is None:
        logger.info("photo tail: no image slot's encoder can take a tuned tail; skipped")
        return None, {"skipped": "no tunable image encoder"}
    slot, net = found
    base = net.tail()
    try:
        photos = tail_photos(view, data, config, slot, cache_dir, lambda: enc,
                             first=base.first, show=show)
    except NoTailPhotos as exc:  # a catalog without photos
        logger.info("photo tail: %s; skipped", exc)
        return None, {"skipped": str(exc)}
    scorer = TailScorer({s: data.products[s] for s in data.image_slots}, slot, weights)
    tail, info = train_tail(base, photos, scorer, config, show)
    if tail is None:
        return None, info
    state = {k: v.detach().cpu().contiguous() for k, v in tail.state_dict().items()}
    return PhotoTail(slot, f"{net.name}@{net.revision}", base.first, state), info


def use_photo_tail(view: IndexView, data: FusionData, config: FusionConfig, tail: PhotoTail,
                   cache_dir: Path | None, encoder: Callable[[], QueryEncoder], *,
                   splits: tuple[int, ...] = (0, 1, 2), show: bool | None = None
                   ) -> dict[str, np.ndarray]:
    """``data``'s photo vectors with the tuned slot encoded through ``tail`` (for the
    photos of ``splits``; the others, and any photo that could not be remade, keep theirs).

    A tail tuned from another revision of the encoder is not used, as serving does not use
    it (:meth:`PhotoTail.tuned_encoder`): ``data``'s vectors come back unchanged.

    Raises:
        ValueError: The index's encoders cannot take this tail.
    """
    enc = encoder()
    found = _tunable(enc)
    if found is None or found[0] != tail.slot:
        raise ValueError(f"The photo tail is for slot {tail.slot!r}, which this index's "
                         "encoders cannot tune.")
    slot, net = found
    if f"{net.name}@{net.revision}" != tail.encoder:
        logger.warning("the photo tail was tuned from %s, but slot %r is encoded by %s@%s: "
                       "its photos keep the untuned vectors", tail.encoder, slot, net.name,
                       net.revision)
        return dict(data.photo_vectors)
    module = net.tail(tail.first)
    module.load_state_dict(tail.state)
    try:
        photos = tail_photos(view, data, config, slot, cache_dir, lambda: enc,
                             extra=splits == (0, 1, 2), splits=splits, first=tail.first,
                             show=show)
    except NoTailPhotos:  # no photo in these splits: nothing to encode
        return dict(data.photo_vectors)
    mine = np.flatnonzero(photos.data >= 0)
    out = dict(data.photo_vectors)
    vectors = out[slot].copy()
    vectors[photos.data[mine]] = tuned_vectors(module, photos, mine).astype(vectors.dtype)
    out[slot] = vectors
    return out
