"""``shopassist doctor``: what is installed, which device, which profiles can load here."""

from __future__ import annotations

import os
import time
from typing import Any

from retrieval.config import Settings


def diagnose(settings: Settings) -> dict[str, Any]:
    """Checks the environment without changing anything; never raises for a missing part."""
    import torch

    from retrieval.cli import version_info
    from retrieval.encoders.base import _cpu_has_bf16, resolve_device
    from retrieval.encoders.hub import hub_reachable

    report: dict[str, Any] = {"versions": version_info()}
    device = resolve_device("auto")
    report["device"] = {
        "auto": str(device),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
        "cpu_bf16": _cpu_has_bf16(),
    }
    report["hub"] = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", ""),
                     "reachable": hub_reachable()}
    report["profiles"] = {name: _try_profile(name, settings) for name in ("clip", "offline")}
    report["store"] = _store(settings)
    report["index"] = _index(settings)
    return report


def _try_profile(name: str, settings: Settings) -> dict[str, Any]:
    from retrieval.profiles import load_profile

    started = time.perf_counter()
    try:
        loaded = load_profile(name, settings)
    except Exception as exc:
        return {"ok": False, "why": str(exc)}
    return {"ok": True, "encoders": [f"{e.name} ({e.dim}-d, rev {e.revision})"
                                     for e in loaded.encoders.values()],
            "load_seconds": round(time.perf_counter() - started, 1)}


def _store(settings: Settings) -> dict[str, Any]:
    if not settings.chroma_host:
        return {"kind": "embedded"}
    from retrieval.store import chroma_client

    try:
        chroma_client(settings, None)
    except Exception as exc:
        return {"kind": "server", "ok": False, "why": str(exc)}
    return {"kind": "server", "ok": True,
            "address": f"{settings.chroma_host}:{settings.chroma_port}"}


def _index(settings: Settings) -> dict[str, Any]:
    from retrieval.manifest import IndexLayout, IndexStateError, read_manifest

    layout = IndexLayout(settings.index_dir)
    try:
        manifest = read_manifest(layout.version_dir())
    except IndexStateError as exc:
        return {"path": str(settings.index_dir), "ok": False, "why": str(exc)}
    return {"path": str(settings.index_dir), "ok": True, "version": manifest["version"],
            "profile": manifest["profile"], "count": manifest["count"],
            "versions": layout.versions()}


def render(report: dict[str, Any]) -> str:
    """The report as aligned text."""
    lines = ["versions:"]
    lines += [f"  {k:<22} {v}" for k, v in report["versions"].items()]
    dev = report["device"]
    lines.append(f"device: auto -> {dev['auto']} (cuda: {dev['cuda']} {dev['cuda_devices']}, "
                 f"mps: {dev['mps']}, cpu threads: {dev['cpu_threads']}, "
                 f"cpu bf16: {dev['cpu_bf16']})")
    hub = report["hub"]
    lines.append(f"hub: reachable={hub['reachable']} HF_HUB_OFFLINE={hub['HF_HUB_OFFLINE']!r}")
    lines.append("profiles:")
    for name, info in report["profiles"].items():
        if info["ok"]:
            lines.append(f"  {name:<8} ok: {', '.join(info['encoders'])}")
        else:
            why = str(info["why"]).replace("\n", "\n" + " " * 14)
            lines.append(f"  {name:<8} cannot load: {why}")
    store = report["store"]
    lines.append(f"store: {store['kind']}" + ("" if store.get("ok", True)
                                              else f" - {store['why']}"))
    index = report["index"]
    if index["ok"]:
        lines.append(f"index: {index['path']} {index['version']} ({index['count']:,} products, "
                     f"profile {index['profile']}; versions {index['versions']})")
    else:
        lines.append(f"index: {index['why']}")
    return "\n".join(lines)
