"""Training the ranking head on logged impressions, through ``accelerate``.

Like the fusion head's loop (:mod:`training.fusion`, whose accelerator, optimiser,
checkpoint and resume checks it shares): one process or several (``torchrun``), each taking
its slice of the same global batch; seeded (a permutation of the training rows per epoch,
drawn from ``(seed, epoch)``); AdamW with warm-up and cosine decay; a checkpoint after every
epoch from which ``resume=True`` continues exactly; early stopping on the validation split
(by session) with the best epoch's weights kept. The joint loss is
``λ1 L_click + λ2 L_convert + λ3 L_stay`` (:mod:`training.ranker_losses`) with
inverse-propensity weights. The result is a versioned artifact (``ranker/vNNNN``) that
``shopassist models promote ranker`` puts in front of an index's search; it also carries the
co-interaction table built from the same log (:mod:`training.cointeraction`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.progress import progress
from retrieval.ranker import Blend, RankerArchitecture, RankingHead, save_ranker
from training.cointeraction import build_cointeraction
from training.datasets import SPLITS
from training.fusion import TrainResult, _check_resume, make_accelerator, make_optimizer
from training.fusion_checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    prefixed,
    restore_rng,
    save_checkpoint,
)
from training.fusion_encode import IndexView
from training.loop import agree_on_stop, close_epoch, finish_step
from training.ranker_config import RankerConfig
from training.ranker_data import (
    TEST,
    TRAIN,
    VALID,
    RankerData,
    build_ranker_data,
    built_with,
    load_impressions,
)
from training.ranker_eval import evaluate_rows, monitor_value
from training.ranker_losses import ranker_losses
from training.registry import HISTORY, ModelRegistry

logger = logging.getLogger(__name__)

KIND = "ranker"


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def new_ranker(data: RankerData, config: RankerConfig) -> RankingHead:
    """A seeded head that starts standardised on the training rows and at their base rates
    (click rate, conversion rate of clicks, mean log dwell), so early steps learn the
    features rather than the averages."""
    torch.manual_seed(config.seed)
    model = RankingHead(RankerArchitecture(
        slots=data.slots, dense=data.names, buckets=config.buckets,
        embed_dim=config.embed_dim, hidden=config.hidden, tower=config.tower,
        dropout=config.dropout, list_size=config.list_size))
    train = data.where(TRAIN)
    x = data.dense[train].astype(np.float64)
    std = x.std(axis=0)
    with torch.no_grad():
        model.mean.copy_(torch.from_numpy(x.mean(axis=0)).float())
        model.std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0)).float())
        clicks = float(data.click[train].sum())
        model.towers["click"][-1].bias.fill_(_logit(clicks / max(len(train), 1)))
        model.towers["convert"][-1].bias.fill_(
            _logit(float(data.convert[train].sum()) / max(clicks, 1.0)))
        clicked = train[data.click[train] > 0]
        model.towers["dwell"][-1].bias.fill_(
            float(data.log_dwell[clicked].mean()) if len(clicked) else 0.0)
    return model


class RankerBatches:
    """Rows of each step: whole queries, so the listwise term sees complete lists. The
    training queries are permuted per epoch (seeded by ``(seed, epoch)``) and cut into
    global batches of about ``batch_size`` rows; each process takes every
    ``processes``-th query of a batch."""

    def __init__(self, data: RankerData, config: RankerConfig, process: int = 0,
                 processes: int = 1) -> None:
        rows = data.where(TRAIN)
        if len(rows) < 2:
            raise ValueError(f"Only {len(rows)} training impressions; log more traffic "
                             "(e.g. `shopassist simulate --sessions 500`).")
        groups = data.group[rows]
        self.starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        self.ends = np.r_[self.starts[1:], len(rows)]
        self.rows = rows
        per_query = len(rows) / len(self.starts)
        self.queries = max(1, min(len(self.starts), round(config.batch_size / per_query)))
        self.seed = config.seed
        self.process, self.processes = process, processes
        self.steps_per_epoch = -(-len(self.starts) // self.queries)
        self._epoch: tuple[int, np.ndarray] | None = None

    def get(self, epoch: int, step: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch = (epoch, torch.randperm(len(self.starts), generator=g).numpy())
        picked = self._epoch[1][step * self.queries:(step + 1) * self.queries]
        picked = picked[self.process::self.processes]
        return self.rows[np.concatenate([np.arange(self.starts[q], self.ends[q])
                                         for q in picked])]


def _tensors(data: RankerData, rows: np.ndarray, device: torch.device) -> dict[str, Any]:
    return {"dense": torch.from_numpy(data.dense[rows]).to(device),
            "cats": torch.from_numpy(data.cats[rows]).to(device),
            "click": torch.from_numpy(data.click[rows]).to(device),
            "convert": torch.from_numpy(data.convert[rows]).to(device),
            "log_dwell": torch.from_numpy(data.log_dwell[rows]).to(device),
            "ipw": torch.from_numpy(data.ipw[rows]).to(device),
            "group": torch.from_numpy(np.unique(data.group[rows],
                                                return_inverse=True)[1]).to(device)}


def _index_root(data: RankerData) -> str:
    """The index root the rows were built against (its version folder's parent)."""
    folder = data.info.get("index", {}).get("folder")
    return str(Path(folder).resolve().parent) if folder else ""


def lambdas_of(config: RankerConfig) -> tuple[float, float, float, float]:
    return (config.lambda_click, config.lambda_convert, config.lambda_stay,
            config.lambda_list)


def train_ranker(index_dir: str | Path, config: RankerConfig, models_dir: str | Path, *,
                 source: str | None = None, device: str = "auto", resume: bool = False,
                 show: bool | None = None, stop_after: int | None = None,
                 data: RankerData | None = None) -> TrainResult:
    """Trains a ranking head on logged impressions and registers the artifact.

    Args:
        index_dir: The index the impressions were logged against (product attributes,
            prices, slots, vocabulary).
        config: Training configuration.
        models_dir: Registry root: the artifact goes to ``ranker/vNNNN``, the checkpoint
            to ``ranker/checkpoint``.
        source: An event log (SQLite path or URL) or a ``shopassist dataset`` folder (default
            ``config.dataset``).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        resume: Continue the run in ``ranker/checkpoint`` (same config and data).
        show: Progress bar (default: on a terminal).
        stop_after: Pause after this many epochs in total (checkpoint kept, no artifact).
        data: Rows already built from ``source`` (benchmarks reuse them across runs).

    Returns:
        The artifact's version and metrics (on the main process), history and timings.

    Raises:
        CheckpointError: ``resume`` without a usable checkpoint of the same run.
        ValueError: No source, bad device, or too little data.
    """
    before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train(index_dir, config, models_dir, source=source, device=device,
                      resume=resume, show=show, stop_after=stop_after, data=data)
    finally:
        torch.set_num_threads(before)


def _train(index_dir: str | Path, config: RankerConfig, models_dir: str | Path, *,
           source: str | None, device: str, resume: bool, show: bool | None,
           stop_after: int | None, data: RankerData | None) -> TrainResult:
    started = time.perf_counter()
    source = source or config.dataset
    if data is None and not source:
        raise ValueError("No training data: pass --dataset DIR (from `shopassist dataset`) "
                         "or --log LOG (a SQLite path or URL), or set dataset in [train.ranker].")
    accelerator = make_accelerator(device, config.mixed_precision)
    main = accelerator.is_main_process
    registry = ModelRegistry(models_dir)
    ckpt_dir = registry.checkpoint_dir(KIND)
    if data is None:
        frame, snapshot = load_impressions(str(source), config)
        data = build_ranker_data(frame, IndexView.open(index_dir), config, snapshot)
    elif data.info.get("built_with") != built_with(config):
        raise ValueError(f"The rows given were built with {data.info.get('built_with')}, "
                         f"but the config asks for {built_with(config)}; rebuild them.")
    data_seconds = time.perf_counter() - started
    batches = RankerBatches(data, config, accelerator.process_index,
                            accelerator.num_processes)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    model = new_ranker(data, config)
    # make_optimizer reads only lr, weight_decay and warmup_steps, which both configs have.
    optimizer, scheduler = make_optimizer(model, config, total_steps)  # type: ignore[arg-type]
    lambdas = lambdas_of(config)
    blend = Blend.from_dict(config.blend())
    valid_rows = data.where(VALID)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -math.inf, "best_epoch": -1,
                             "bad_epochs": 0, "train_seconds": 0.0,
                             "history": {"steps": [], "epochs": []}}
    # The same dataset against another index gives other rows and features.
    trained_on = {"index": _index_root(data), "rows": len(data)}
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        tensors, meta = load_checkpoint(ckpt_dir)
        _check_resume(meta, config, data.snapshot, ckpt_dir,  # type: ignore[arg-type]
                      trained_on)
        model.load_state_dict(prefixed(tensors, "model"))
        optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        best_state = prefixed(tensors, "best") or None
        restore_rng(tensors)
        state.update({k: meta[k] for k in state})
        logger.info("resuming at epoch %d, step %d", state["epoch"], state["step"])

    history = state["history"]
    if main and not resume:  # "before": the fresh head on the validation split
        history["epochs"].append({"epoch": 0, "step": 0, "seconds": 0.0, "train": {},
                                  "valid": evaluate_rows(model, data, valid_rows, blend,
                                                         lambdas)})
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: RankingHead = accelerator.unwrap_model(wrapped)
    dev = accelerator.device
    stopped = "epochs"
    bar = progress(total_steps, "train ranker", "step", show) if main else None
    if bar is not None and state["step"]:
        bar.update(state["step"])
    train_started = time.perf_counter() - state["train_seconds"]
    epoch = state["epoch"]
    while epoch < config.epochs:
        if stop_after is not None and epoch >= stop_after:
            stopped = "paused"
            break
        wrapped.train()
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch = _tensors(data, batches.get(epoch, step), dev)
            with accelerator.autocast():
                out = wrapped(batch["dense"], batch["cats"])
            loss, parts = ranker_losses(out, batch["click"], batch["convert"],
                                        batch["log_dwell"], batch["ipw"], lambdas[:3],
                                        batch["group"], lambdas[3])
            finish_step(accelerator, loss, parts, optimizer, scheduler, state, epoch=epoch,
                        main=main, history=history, sums=sums, bar=bar,
                        table="[train.ranker]")
        epoch += 1
        state["epoch"] = epoch
        state["train_seconds"] = time.perf_counter() - train_started
        decision: str | None = None
        if main:
            metrics = evaluate_rows(unwrapped, data, valid_rows, blend, lambdas, dev)
            value = monitor_value(metrics, config.monitor) if metrics else -math.inf
            best_state, decision = close_epoch(
                state, value=value, metrics=metrics, sums=sums,
                steps_per_epoch=steps_per_epoch, config=config, checkpointed=unwrapped,
                best_of=unwrapped, best_state=best_state, optimizer=optimizer,
                scheduler=scheduler, snapshot=data.snapshot, ckpt_dir=ckpt_dir,
                extra={"trained_on": trained_on})
        decision = agree_on_stop(accelerator, decision)
        if decision is not None:
            stopped = decision
            break
    if bar is not None:
        bar.close()
    result = TrainResult(None, None, {}, history, time.perf_counter() - started, epoch,
                         state["step"], stopped, data.info)
    if not main or stopped == "paused":
        accelerator.wait_for_everyone()
        return result

    final = copy.deepcopy(unwrapped).cpu()
    if best_state is not None:
        final.load_state_dict(best_state)
    final.eval()
    metrics: dict[str, Any] = {
        "valid": next((e["valid"] for e in history["epochs"]
                       if e["epoch"] == state["best_epoch"]), {}),
        "test": evaluate_rows(final, data, data.where(TEST), blend, lambdas),
        "best_epoch": state["best_epoch"], "monitor": config.monitor, "best": state["best"]}
    shuffled_test = np.flatnonzero((data.split == TEST) & data.shuffled)
    if len(shuffled_test):
        metrics["test_shuffled"] = evaluate_rows(final, data, shuffled_test, blend, lambdas)
    co = build_cointeraction(data.frame.assign(
        added_to_cart=data.carted, purchased=data.purchased, split=np.array(SPLITS)[data.split]))
    training = {"seconds": round(state["train_seconds"], 1),
                "data_seconds": round(data_seconds, 1), "epochs": epoch,
                "steps": state["step"], "stopped": stopped, "device": str(dev),
                "processes": accelerator.num_processes,
                "mixed_precision": str(accelerator.mixed_precision),
                "torch": torch.__version__}

    def write(folder: Path) -> None:
        save_ranker(final, folder, extra={
            "config": config.to_dict(), "data_snapshot": data.snapshot, "metrics": metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index": data.info.get("index", {}), "data": data.info, "training": training,
            "blend": config.blend()}, cointeraction=co)
        (folder / HISTORY).write_text(json.dumps(history) + "\n")

    version, artifact = registry.publish(KIND, write)
    save_checkpoint(ckpt_dir, model=unwrapped.state_dict(), best=best_state,
                    optimizer=optimizer.state_dict(), meta={
                        **{k: state[k] for k in state}, "config": config.to_dict(),
                        "data_snapshot": data.snapshot, "scheduler": scheduler.state_dict(),
                        "finished": True, "artifact": version, "trained_on": trained_on})
    logger.info("ranker %s written to %s (%s after %d epochs, %.0f s training)", version,
                artifact, stopped, epoch, state["train_seconds"])
    accelerator.wait_for_everyone()
    result.version, result.artifact, result.metrics = version, artifact, metrics
    return result

