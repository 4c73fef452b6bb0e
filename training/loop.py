"""The end of a training step and of an epoch, shared by the fusion head and the ranker.

Both loops keep the same run state (``epoch``, ``step``, ``best``, ``best_epoch``,
``bad_epochs``, ``train_seconds``, ``history``), checkpoint after every epoch and stop
early on the validation figure or on the time budget; only the main process decides, and
every process learns the decision (:func:`agree_on_stop`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from training.fusion_checkpoint import save_checkpoint

logger = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the weights are lost, nothing is registered."""


def finish_step(accelerator: Any, loss: torch.Tensor, parts: Mapping[str, torch.Tensor],
                optimizer: Any, scheduler: Any, state: dict[str, Any], *, epoch: int,
                main: bool, history: dict[str, list[dict[str, Any]]],
                sums: dict[str, float], bar: Any, table: str = "[train.*]") -> None:
    """Back-propagates ``loss`` and steps the optimiser and schedule; on the main process
    records the step (loss, its ``parts``, learning rate) in ``history``, adds it to the
    epoch's ``sums`` and advances the progress ``bar``; ``table`` is the config table the
    learning rate comes from (for the message when the loss is not finite).

    Raises:
        TrainingDiverged: ``loss`` is not finite (a step would make every weight NaN).
    """
    # A CPU-GPU sync point, once per step: a NaN step poisons every later one, and the
    # head would be registered and served with NaN weights.
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        # Every process must stop together: one that raised alone would leave the others
        # waiting in the next gradient all-reduce until the collective's timeout.
        finite = accelerator.reduce(finite, reduction="mean")
    if bool(finite < 1):
        raise TrainingDiverged(
            f"The training loss became {_loss_text(loss)} at epoch {epoch + 1}, step "
            f"{state['step'] + 1} (learning rate {scheduler.get_last_lr()[0]:g}): training "
            f"diverged and nothing was registered. Lower lr (or the loss weights) in {table} "
            "and train again without --resume.")
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state["step"] += 1
    if not main:
        return
    record = {"step": state["step"], "epoch": epoch, "loss": float(loss.detach()),
              "lr": scheduler.get_last_lr()[0], **{k: float(v) for k, v in parts.items()}}
    history["steps"].append(record)
    for k in ("loss", *parts):
        sums[k] = sums.get(k, 0.0) + record[k]
    bar.update(1)
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=epoch + 1)


def _loss_text(loss: torch.Tensor) -> str:
    """The diverged loss for the message (finite here: another process's was not)."""
    value = float(loss.detach())
    return f"non-finite in another process ({value} here)" if math.isfinite(value) \
        else str(value)


def close_epoch(state: dict[str, Any], *, value: float, metrics: Mapping[str, Any],
                sums: Mapping[str, float], steps_per_epoch: int, config: Any,
                checkpointed: torch.nn.Module, best_of: torch.nn.Module,
                best_state: dict[str, torch.Tensor] | None, optimizer: Any, scheduler: Any,
                snapshot: str, ckpt_dir: Path, extra: Mapping[str, Any] | None = None
                ) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Records an epoch's validation ``value``, keeps the best weights and checkpoints.

    Args:
        state: The run state (updated in place; its ``history`` gets the epoch's record).
        value: The monitored validation figure (higher is better).
        metrics: All validation figures, for the history.
        sums: Training losses summed over the epoch's steps.
        steps_per_epoch: To average ``sums``.
        config: ``min_delta``, ``monitor``, ``patience``, ``max_minutes`` and ``to_dict``.
        checkpointed: The module whose state the checkpoint holds.
        best_of: The module whose weights are kept when ``value`` improves.
        best_state: The best weights so far.
        optimizer, scheduler: Their states go in the checkpoint.
        snapshot: The training data's snapshot id.
        ckpt_dir: Where the checkpoint goes.
        extra: More of the run's identity for the checkpoint (what ``--resume`` checks).

    Returns:
        The best weights, and why to stop (``early-stopped``, ``time-budget``) or ``None``.
    """
    epoch = state["epoch"]
    improved = value > state["best"] + config.min_delta
    if improved:
        state.update(best=value, best_epoch=epoch, bad_epochs=0)
        best_state = {k: v.detach().cpu().clone() for k, v in best_of.state_dict().items()}
    else:
        state["bad_epochs"] += 1
    state["history"]["epochs"].append({
        "epoch": epoch, "step": state["step"], "monitor": value,
        "seconds": state["train_seconds"],
        "train": {k: v / max(1, steps_per_epoch) for k, v in sums.items()},
        "valid": dict(metrics)})
    logger.info("epoch %d: loss %.4f, valid %s = %.4f%s", epoch,
                sums.get("loss", 0.0) / max(1, steps_per_epoch), config.monitor, value,
                " (best)" if improved else "")
    save_checkpoint(ckpt_dir, model=checkpointed.state_dict(), best=best_state,
                    optimizer=optimizer.state_dict(), meta={
                        **state, "config": config.to_dict(), "data_snapshot": snapshot,
                        "scheduler": scheduler.state_dict(), "finished": False,
                        **dict(extra or {})})
    if state["bad_epochs"] >= config.patience:
        return best_state, "early-stopped"
    if state["train_seconds"] > config.max_minutes * 60:
        return best_state, "time-budget"
    return best_state, None


def agree_on_stop(accelerator: Any, decision: str | None) -> str | None:
    """The main process's decision, given to every process (all wait for each other)."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        decision = broadcast_object_list([decision])[0]
    accelerator.wait_for_everyone()
    return decision
