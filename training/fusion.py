"""Training the fusion head on an index's stored vectors, through ``accelerate``.

One process or several (``torchrun --standalone --nproc_per_node N``, gloo on CPU, NCCL on
GPUs): every process draws its slice of the same global batch
(:mod:`training.fusion_batches`), DDP averages the gradients, and only the first process
encodes the query cache, evaluates, checkpoints and writes the artifact. Seeded; AdamW with
linear warm-up and cosine decay; early stopping on the validation metric
(:func:`training.fusion_eval.monitor_value`) with the best epoch's weights kept; a
checkpoint after every epoch from which ``resume=True`` continues exactly; the result is a
versioned artifact (:mod:`training.registry`) that ``shopassist models promote`` switches
the index to. Before the head, the first process fine-tunes the image encoder's tail for
query photos (:mod:`training.photo_tail`, kept in the checkpoint folder for the other
processes and for ``resume``); the head trains on the tuned photo vectors and carries the
tail in its artifact.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.config import Settings, load_settings
from retrieval.fusion_head import FusionHead, HeadConfig, group_key, save_head
from retrieval.photo_tail import TAIL_FILE, PhotoTail
from retrieval.progress import progress
from retrieval.refuse import training_free_fusion
from training.fusion_batches import FusionBatches, to_torch
from training.fusion_checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_flat,
    prefixed,
    restore_rng,
    save_checkpoint,
)
from training.fusion_config import FusionConfig
from training.fusion_data import TEST, TRAIN, VALID, FusionData, build_fusion_data
from training.fusion_encode import IndexView, QueryEncoder, load_npz, save_npz
from training.fusion_eval import (
    HeadFusion,
    choose_base_share,
    choose_photo_share,
    choose_tag_share,
    evaluate,
    monitor_value,
    tag_accuracy,
)
from training.fusion_objective import FusionObjective
from training.loop import agree_on_stop, close_epoch, finish_step
from training.photo_tail import fit_photo_tail, use_photo_tail
from training.registry import HISTORY, ModelRegistry

logger = logging.getLogger(__name__)

TAIL_RECORD = "photo_tail.json"  # in the checkpoint folder: the run's tail (or none)
TAIL_VECTORS = "photo_tail_vectors.npz"  # beside it: the data's photos through that tail

# Config fields a resumed run may change (they do not alter what is computed per step).
RESUMABLE_CHANGES = {"max_minutes", "patience", "min_delta", "epochs", "base_shares",
                     "tag_shares", "memory_weights", "memory_k", "memory_tau",
                     "photo_shares"}


@dataclass
class TrainResult:
    """What a training run produced."""

    version: str | None  # None: the run paused (``stop_after``) or was not the main process
    artifact: Path | None
    metrics: dict[str, Any]
    history: dict[str, list[dict[str, Any]]]
    seconds: float
    epochs: int
    steps: int
    stopped: str
    data: dict[str, Any] = field(default_factory=dict)


def make_accelerator(device: str = "auto", mixed_precision: str = "auto") -> Any:
    """An :class:`accelerate.Accelerator` for ``device`` (auto, cpu, cuda, mps).

    Raises:
        ValueError: An unknown device, or CUDA asked for where there is none.
    """
    from accelerate import Accelerator

    if device not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"--device takes auto, cpu, cuda or mps (got {device!r}); pick a GPU "
                         "with CUDA_VISIBLE_DEVICES.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu.")
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available()
                              and not torch.backends.mps.is_available())
    precision = mixed_precision
    if precision == "auto":
        if cpu or not torch.cuda.is_available():
            precision = "no"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(cpu=cpu, mixed_precision=precision)


def new_head(data: FusionData, config: FusionConfig) -> FusionHead:
    """A seeded head whose first layers see standardised inputs.

    Stored slot vectors are unit-length but far from centred (EfficientNet features are
    all positive; any two products have a cosine of ~0.7), which leaves a fresh MLP
    staring at one big shared component. Folding each slot's training-product mean and
    spread into its first linear layer (``W / s``, ``b - W mu / s``) starts it on centred,
    unit-variance inputs, inside the head's fixed architecture: nothing changes at
    inference.
    """
    torch.manual_seed(config.seed)
    cols = data.tag_columns(config.tags) if config.w_tags > 0 else []
    groups = [g for g in (data.image_slots, data.text_slots) if g] if cols else []
    head = FusionHead(HeadConfig(
        slots=tuple((s.name, s.dim) for s in data.slots), dim=config.dim,
        hidden=config.hidden, dropout=config.dropout,
        tags=tuple((data.codes.names[c], len(data.codes.values[c])) for c in cols),
        tag_groups=tuple(tuple(g) for g in groups), tag_hidden=config.tag_hidden,
        query_tag_groups=tuple(tuple(g) for g in groups if g == data.text_slots)))
    rows = np.flatnonzero(data.split == TRAIN)
    stats = {}
    with torch.no_grad():
        for name, _dim in head.config.slots:
            x = data.products[name][rows].astype(np.float32)
            mean = torch.from_numpy(x.mean(axis=0))
            std = torch.from_numpy(x.std(axis=0))
            stats[name] = (mean, std.clamp_min(max(float(std.median()) * 0.1, 1e-6)))
            standardise(head.proj[name][0], *stats[name])
        for group in head.config.tag_groups:
            mean, std = (torch.cat(v) for v in zip(*(stats[s] for s in group), strict=True))
            standardise(head.taggers[group_key(group)][0], mean, std)
    return head


@torch.no_grad()
def with_tag_memory(head: FusionHead, data: FusionData, config: FusionConfig,
                    batch: int = 8192) -> FusionHead:
    """``head`` carrying a tag memory of the training products: their photos' embeddings
    in the trained shared space and their tag codes (held-out products are never in it)."""
    rows = np.flatnonzero(data.split == TRAIN)
    cols = [data.codes.names.index(name) for name, _k in head.config.tags]
    was = head.training
    head.eval()
    keys = torch.cat([head.learned({s: torch.from_numpy(
        data.products[s][rows[i:i + batch]].astype(np.float32)) for s in data.image_slots})
        for i in range(0, len(rows), batch)])
    head.train(was)
    tags = torch.from_numpy(data.codes.codes[rows][:, cols].astype(np.int64))
    return head.with_memory(keys, tags, 0.0, slots=data.image_slots, k=config.memory_k,
                            tau=config.memory_tau)


def standardise(first: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Folds ``(x - mean) / std`` into a linear layer (``W / s``, ``b - W mu / s``)."""
    first.weight.div_(std[None, :])
    first.bias.sub_(first.weight @ mean)


def make_optimizer(objective: FusionObjective, config: FusionConfig, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases, gates and the calibration) with warm-up + cosine."""
    decay = [p for p in objective.parameters() if p.ndim >= 2]
    rest = [p for p in objective.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    warmup = max(1, min(config.warmup_steps, total_steps // 5))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * done))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _check_resume(meta: dict[str, Any], config: FusionConfig, snapshot: str, where: Path,
                  trained_on: dict[str, Any] | None = None) -> None:
    if meta.get("finished"):
        raise CheckpointError(f"The checkpoint in {where} is of a finished run (artifact "
                              f"{meta.get('artifact')}); train again without --resume.")
    old = meta.get("config", {})
    new = config.to_dict()
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise CheckpointError(f"The checkpoint in {where} was trained with other settings "
                              f"({', '.join(changed)}); resume with the same config or start "
                              "a new run without --resume.")
    if meta.get("data_snapshot") != snapshot:
        raise CheckpointError(f"The checkpoint in {where} was trained on other data "
                              f"(snapshot {meta.get('data_snapshot')}, now {snapshot}); start "
                              "a new run without --resume.")
    old_on = meta.get("trained_on")
    if trained_on is not None and old_on is None:
        raise CheckpointError(f"The checkpoint in {where} does not record which index it was "
                              "trained against (an older version wrote it), so resuming "
                              "cannot be checked: start a new run without --resume.")
    if trained_on is not None and old_on != trained_on:
        raise CheckpointError(f"The checkpoint in {where} was trained against another index "
                              f"or rows ({old_on}, now {trained_on}); resume with the same "
                              "--index, or start a new run without --resume.")


def run_photo_tail(view: IndexView, data: FusionData, config: FusionConfig, cache: Path,
                   make_encoder: Callable[[], QueryEncoder], ckpt_dir: Path, accelerator: Any,
                   *, resume: bool, show: bool | None, checkpoint: Mapping[str, Any] | None
                   = None) -> tuple[PhotoTail | None, dict[str, Any], str | None]:
    """The run's photo tail (:mod:`training.photo_tail`), and ``data``'s photo vectors
    switched to it.

    The first process trains it, or, resuming, takes the one the checkpoint folder kept,
    so every process and every resumed epoch train the head on the same photo vectors.

    Args:
        checkpoint: Resuming, the checkpoint's meta: the kept tail must be the one it
            records (``photo_tail``, the tail's sha256).

    Returns:
        The tail (``None``: no tail), what its training did, and its sha256 (for the
        checkpoint).

    Raises:
        CheckpointError: Resuming, the tail kept beside the checkpoint is not the one its
            head trained with, or its record is unreadable.
    """
    record = ckpt_dir / TAIL_RECORD
    main = accelerator.is_main_process
    if not config.photo_tail:
        if main and not resume:  # an earlier run's tail is not this run's
            for stale in (record, ckpt_dir / TAIL_FILE, ckpt_dir / TAIL_VECTORS):
                stale.unlink(missing_ok=True)
        return None, {}, None
    if main and not (resume and record.is_file()):
        weights = training_free_fusion(view.manifest).weights()
        tail, info = fit_photo_tail(view, data, config, weights, cache, make_encoder, show)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        meta = tail.save(ckpt_dir) if tail is not None else None
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"tail": meta, "info": info}, default=str) + "\n")
        os.replace(tmp, record)  # whole or not at all
    accelerator.wait_for_everyone()
    try:
        saved = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The photo tail record {record} is unreadable ({exc}); start "
                              "a new run without --resume.") from exc
    sha = (saved["tail"] or {}).get("sha256")
    if checkpoint is not None and checkpoint.get("photo_tail", sha) != sha:
        raise CheckpointError(f"The photo tail in {ckpt_dir} is not the one the checkpoint's "
                              "head trained with (another run wrote it); start a new run "
                              "without --resume.")
    if not saved["tail"]:
        return None, saved["info"], None
    tail = PhotoTail.load(ckpt_dir, saved["tail"])
    # The first process encodes the data's photos through the tail and keeps them beside
    # it; the others (and a resumed run) read them, loading no encoder.
    vectors_path = ckpt_dir / TAIL_VECTORS
    expected = data.photo_vectors[tail.slot].shape

    def kept() -> np.ndarray | None:
        hit = load_npz(vectors_path)
        if hit is None or str(hit.get("sha256")) != sha or hit.get(tail.slot) is None \
                or hit[tail.slot].shape != expected:
            return None
        return hit[tail.slot]

    tuned = kept() if resume else None
    if main and tuned is None:
        tuned = use_photo_tail(view, data, config, tail, cache, make_encoder,
                               show=show)[tail.slot]
        save_npz(vectors_path, {"sha256": np.array(sha), tail.slot: tuned})
    accelerator.wait_for_everyone()
    if tuned is None:
        tuned = kept()
        if tuned is None:
            raise CheckpointError(f"{vectors_path}, the photos through the run's tail, is "
                                  "missing or not this run's; start a new run.")
    data.photo_vectors = {**data.photo_vectors, tail.slot: tuned}
    return tail, saved["info"], sha


def train_fusion(index_dir: str | Path, config: FusionConfig, models_dir: str | Path, *,
                 device: str = "auto", resume: bool = False, cache_dir: str | Path | None =
                 None, settings: Settings | None = None, show: bool | None = None,
                 stop_after: int | None = None,
                 encoder: Callable[[IndexView], QueryEncoder] | None = None) -> TrainResult:
    """Trains a fusion head for the index at ``index_dir`` and registers the artifact.

    Args:
        index_dir: Index root; its serving version's stored vectors are the inputs.
        config: Training configuration.
        models_dir: Registry root (``models/``): the artifact goes to ``fusion/vNNNN`` and
            the checkpoint to ``fusion/checkpoint``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        resume: Continue the run in ``fusion/checkpoint`` (same config and data).
        cache_dir: Where query encodings are cached (default ``<models_dir>/cache``).
        settings: Engine settings used to load the index's encoders (default: resolved).
        show: Progress bars (default: on a terminal).
        stop_after: Pause after this many epochs in total (checkpoint kept, no artifact).
        encoder: Makes the query encoder (default: the profile the index was built with).

    Returns:
        The artifact's version and metrics (on the main process), history and timings.

    Raises:
        CheckpointError: ``resume`` without a usable checkpoint of the same run.
        ValueError: Bad device, or too little data for one batch.
    """
    started = time.perf_counter()
    accelerator = make_accelerator(device, config.mixed_precision)
    main = accelerator.is_main_process
    registry = ModelRegistry(models_dir)
    ckpt_dir = registry.checkpoint_dir("fusion")
    cache = Path(cache_dir) if cache_dir is not None else Path(models_dir) / "cache"
    view = IndexView.open(index_dir)
    settings = settings or load_settings()

    made: list[QueryEncoder] = []  # loaded once for the data, the tail and its photos

    def make_encoder() -> QueryEncoder:
        if not made:
            made.append(encoder(view) if encoder is not None
                        else QueryEncoder.for_index(view, settings))
        return made[0]

    data: FusionData | None = None
    if main:  # the first process encodes what is not cached yet; the others read the cache
        data = build_fusion_data(view, config, cache, make_encoder, show)
    accelerator.wait_for_everyone()
    if data is None:
        data = build_fusion_data(view, config, cache, None, False)
    data_seconds = time.perf_counter() - started
    resumed = None
    if resume:  # refused now, before minutes of photo tail for a run that cannot go on
        resumed = load_checkpoint(ckpt_dir)
        _check_resume(resumed[1], config, data.snapshot, ckpt_dir)
    tail, tail_info, tail_sha = run_photo_tail(
        view, data, config, cache, make_encoder, ckpt_dir, accelerator, resume=resume,
        show=show, checkpoint=resumed[1] if resumed is not None else None)
    made.clear()  # the head trains on stored vectors: no encoder from here on
    batches = FusionBatches(data, config, accelerator.process_index, accelerator.num_processes)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    objective = FusionObjective(new_head(data, config), config)
    optimizer, scheduler = make_optimizer(objective, config, total_steps)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -math.inf, "best_epoch": -1,
                             "bad_epochs": 0, "train_seconds": 0.0,
                             "history": {"steps": [], "epochs": []}}
    best_state: dict[str, torch.Tensor] | None = None
    if resumed is not None:
        tensors, meta = resumed
        objective.load_state_dict(prefixed(tensors, "model"))
        optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        best_state = prefixed(tensors, "best") or None
        restore_rng(tensors)
        state.update({k: meta[k] for k in state})
        logger.info("resuming at epoch %d, step %d", state["epoch"], state["step"])

    history = state["history"]
    if main and not resume:  # "before": the fresh head on the validation split
        history["epochs"].append({"epoch": 0, "step": 0, "seconds": 0.0, "train": {},
                                  "valid": evaluate(HeadFusion(objective.head), data, VALID,
                                                    kinds=("text_photo", "photo"))})
    model, optimizer = accelerator.prepare(objective, optimizer)
    unwrapped: FusionObjective = accelerator.unwrap_model(model)
    dev = accelerator.device
    stopped = "epochs"
    bar = progress(total_steps, "train fusion", "step", show if main else False) \
        if main else None
    if bar is not None and state["step"]:
        bar.update(state["step"])
    train_started = time.perf_counter() - state["train_seconds"]
    epoch = state["epoch"]
    while epoch < config.epochs:
        if stop_after is not None and epoch >= stop_after:
            stopped = "paused"
            break
        model.train()
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch = to_torch(batches.get(epoch, step), dev)
            with accelerator.autocast():
                loss, parts = model(batch)
            finish_step(accelerator, loss, parts, optimizer, scheduler, state, epoch=epoch,
                        main=main, history=history, sums=sums, bar=bar,
                        table="[train.fusion]")
        epoch += 1
        state["epoch"] = epoch
        state["train_seconds"] = time.perf_counter() - train_started
        decision: str | None = None
        if main:
            metrics = evaluate(HeadFusion(unwrapped.head, dev), data, VALID,
                               kinds=("text_photo", "photo"))
            value = monitor_value(metrics, config.monitor)
            best_state, decision = close_epoch(
                state, value=value, metrics=metrics, sums=sums,
                steps_per_epoch=steps_per_epoch, config=config, checkpointed=unwrapped,
                best_of=unwrapped.head, best_state=best_state, optimizer=optimizer,
                scheduler=scheduler, snapshot=data.snapshot, ckpt_dir=ckpt_dir,
                extra={"photo_tail": tail_sha})
        decision = agree_on_stop(accelerator, decision)
        if decision is not None:
            stopped = decision
            break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    result = TrainResult(None, None, {}, history, seconds, epoch, state["step"], stopped,
                         data.info)
    if not main or stopped == "paused":
        accelerator.wait_for_everyone()
        return result

    head = copy.deepcopy(unwrapped.head).cpu()
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    weights = training_free_fusion(view.manifest).weights()
    head = head.with_base_share(0.0, [weights[name] for name in head.names])
    share, tried = choose_base_share(head, data, config.base_shares, VALID)
    head = head.with_base_share(share).eval()
    logger.info("blending %.2f of the training-free fusion (validation: %s)", share, tried)
    if head.config.tags and any(config.memory_weights):
        head = with_tag_memory(head, data, config)
    tag_share, memory_weight, tag_tried = choose_tag_share(
        head, data, config.tag_shares, VALID, config.memory_weights)
    head = head.with_base_share(share, tag_share=tag_share,
                                memory_weight=memory_weight).eval()
    if head.config.tags:
        logger.info("blending %.2f of the tag block, memory weight %.2f (validation: %s)",
                    tag_share, memory_weight, tag_tried)
    photo_share, photo_tried = choose_photo_share(head, data, config.photo_shares, VALID)
    if photo_share is not None:
        head = head.with_base_share(share, photo_share=photo_share,
                                    photo_slots=data.image_slots).eval()
    logger.info("photo queries: %s of the training-free cosine (validation: %s)",
                share if photo_share is None else photo_share, photo_tried)
    test = evaluate(HeadFusion(head), data, TEST)
    valid = next((e["valid"] for e in history["epochs"] if e["epoch"] == state["best_epoch"]),
                 {})
    metrics = {"valid": valid, "test": test, "best_epoch": state["best_epoch"],
               "monitor": config.monitor, "best": state["best"],
               "base_share": {"chosen": share, "valid": tried},
               "tag_share": {"chosen": tag_share, "memory_weight": memory_weight,
                             "valid": tag_tried},
               "photo_share": {"chosen": photo_share, "valid": photo_tried},
               "tags": tag_accuracy(head, data, TEST),
               "photo_tail": tail_info}
    training = {"seconds": round(state["train_seconds"], 1),
                "data_seconds": round(data_seconds, 1), "epochs": epoch,
                "steps": state["step"], "stopped": stopped,
                "device": str(dev), "processes": accelerator.num_processes,
                "mixed_precision": str(accelerator.mixed_precision),
                "torch": torch.__version__}

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tail_meta = tail.save(folder) if tail is not None else None
        save_head(head, folder, extra={
            "photo_tail": tail_meta,
            "config": config.to_dict(), "data_snapshot": data.snapshot, "metrics": metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index": data.info["index"], "data": data.info, "training": training,
            "calibration": unwrapped.calibration(),
            "tag_values": {name: list(data.codes.values[data.codes.names.index(name)])
                           for name, _k in head.config.tags}})

        (folder / HISTORY).write_text(json.dumps(history) + "\n")

    version, artifact = registry.publish("fusion", write)
    save_checkpoint(ckpt_dir, model=unwrapped.state_dict(), best=best_state,
                    optimizer=optimizer.state_dict(), meta={
                        **{k: state[k] for k in state}, "config": config.to_dict(),
                        "data_snapshot": data.snapshot, "scheduler": scheduler.state_dict(),
                        "finished": True, "artifact": version, "photo_tail": tail_sha})
    logger.info("fusion head %s written to %s (%s after %d epochs, %.0f s training)",
                version, artifact, stopped, epoch, state["train_seconds"])
    accelerator.wait_for_everyone()
    result.version, result.artifact, result.metrics = version, artifact, metrics
    return result

