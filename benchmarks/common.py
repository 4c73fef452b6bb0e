"""Small helpers shared by the speed and recall benchmarks: machine line, percentiles,
markdown tables, JSON output and the shopper-photo query set.

Importing it sets ``HF_HUB_OFFLINE=1`` unless set: the benchmarks never need the hub.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.shopper_photos import shopper_photo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
FASHION = SHARED / "fashion"
FASHION_300PX = SHARED / "fashion_300px"
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA GPU.")
    return spec


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, cores, library versions, device and date, for the header line."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def header_line(info: Mapping[str, Any]) -> str:
    parts = [f"CPU {info['cpu']}", f"{info['cores']} cores",
             f"torch {info['torch']} ({info['torch_threads']} threads)"]
    if info.get("onnxruntime"):
        parts.append(f"onnxruntime {info['onnxruntime']}")
    parts.append(f"device {info['device']}" + (f" ({info['gpu']})" if "gpu" in info else ""))
    if "load_avg_1m" in info:
        parts.append(f"load avg {info['load_avg_1m']} at start")
    parts.append(info["date"])
    return "Machine: " + ", ".join(parts)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else \
        float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if np.isnan(value):
                return "–"
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def shopper_queries(n: int, seed: int, indexed: Collection[str]
                    ) -> list[tuple[str, Image.Image]]:
    """``n`` shopper photos (id, photo) of indexed products, from their 225x300 photos.

    Each photo is perturbed with its own seeded generator, so a query is the same whatever
    ``n`` is.
    """
    folder = FASHION_300PX / "images"
    ids = sorted(p.stem for p in folder.glob("*.jpg") if p.stem in indexed)
    if not ids:
        raise SystemExit(f"No photo in {folder} belongs to a product of this index.")
    rng = np.random.default_rng(seed)
    chosen = [str(x) for x in rng.choice(ids, size=min(n, len(ids)), replace=False)]
    return [(pid, shopper_photo(load_rgb(folder / f"{pid}.jpg"),
                                np.random.default_rng([seed, i])))
            for i, pid in enumerate(chosen)]


def fused_matrix(engine: Any, chunk: int = 4096) -> np.ndarray:
    """All products' fused vectors of an engine, float32, built in chunks (bounded
    temporaries): the exact-search baseline's matrix."""
    n = len(engine.products)
    out = np.empty((n, engine.fusion.dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = engine.fusion.fuse(
            {s: v[start:stop] for s, v in engine.vectors.items()}, stop - start)
    return out
