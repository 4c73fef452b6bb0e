"""Training checkpoints: tensors in safetensors, everything else in JSON (no pickles).

A checkpoint is ``state.safetensors`` (model, best model so far, optimiser moments, RNG
states) and ``state.json`` (step, epoch, config, optimiser hyper-parameters, scheduler
state, history, early-stopping state, and the sha256 of the tensors file). Both are
replaced atomically, the JSON last, so a run killed while saving resumes from the previous
complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TENSORS = "state.safetensors"
META = "state.json"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, or from another run."""


def optimizer_to_flat(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Splits ``optimizer.state_dict()`` into tensors and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                        ) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("plain", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")),
                  key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_checkpoint(folder: Path, *, model: Mapping[str, torch.Tensor],
                    best: Mapping[str, torch.Tensor] | None, optimizer: Mapping[str, Any],
                    meta: Mapping[str, Any]) -> Path:
    """Writes one checkpoint (replacing the previous one) and returns its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    if best is not None:
        tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()}
    optim_tensors, optim_meta = optimizer_to_flat(optimizer)
    tensors |= optim_tensors | rng_tensors()
    tmp = folder / f".{TENSORS}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, folder / TENSORS)
    full = {"format": FORMAT, "sha256": digest, "optimizer": optim_meta, **meta}
    tmp_meta = folder / f".{META}.{os.getpid()}.tmp"
    tmp_meta.write_text(json.dumps(full, indent=1, default=_json_default) + "\n")
    os.replace(tmp_meta, folder / META)
    return folder


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads and verifies a checkpoint.

    Raises:
        CheckpointError: Missing files, or tensors that do not match the recorded hash.
    """
    try:
        meta = json.loads((folder / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"No checkpoint in {folder} to resume from; start without "
                              "--resume.") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / META} is corrupt ({exc}).") from None
    path = folder / TENSORS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete.") from None
    if meta.get("format") != FORMAT or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{path} does not match {META} (corrupted or from another "
                              "save); delete the folder and train from the start.")
    try:
        tensors = load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}).") from None
    return tensors, meta


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
