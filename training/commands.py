"""``shopassist`` sub-commands of the trained models: ``train``, ``models``, ``eval``.

Found through the ``shopassist.commands`` entry point group (``pyproject.toml``). Heavy
imports happen inside the handlers, so ``shopassist --help`` stays fast.

- ``shopassist train fusion [--config FILE] [--index DIR] [--out models/] [--device auto]
  [--resume]`` — also under ``torchrun --standalone --nproc_per_node N``.
- ``shopassist train ranker [--config FILE] [--index DIR] [--dataset DIR | --log LOG]
  [--out models/] [--device auto] [--resume]``.
- ``shopassist models list`` / ``promote fusion|ranker VERSION`` / ``rollback fusion|ranker``.
- ``shopassist eval [--index DIR] [--version latest] [--ranker VERSION] [--sessions LOG
  [--truth FILE] [--max-queries N]]`` — the Markdown + PNG report, on held-out catalog
  queries and, with ``--sessions``, on held-out simulated sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from retrieval.paths import output_folder

DEFAULT_MODELS = "models"
DEFAULT_CACHE = "data/cache/fusion"
KINDS = ("fusion", "ranker")  # as training.registry.KINDS (not imported: --help stays fast)


def register(sub: Any) -> None:
    """Entry point for ``shopassist.commands``: ``train``, ``models``, ``eval``."""
    config = _config_parent("[train.fusion] (and [retrieval]) tables")
    index = argparse.ArgumentParser(add_help=False)
    index.add_argument("--index", help="index folder (default: settings.index_dir, "
                       "data/index)")

    train = sub.add_parser("train", help="train a model from the index and the event log")
    kinds = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    p = kinds.add_parser(
        "fusion", parents=[config, index], help="the fusion head (text <-> photo alignment)",
        description="Train the fusion head on the index's stored vectors (catalog "
        "self-supervision, shoppers' photos, logged pairs when [train.fusion] dataset is "
        "set) and register it under OUT/fusion/vNNNN. Runs under torchrun for several "
        "processes.")
    p.add_argument("--out", default=DEFAULT_MODELS, help=f"models folder (default "
                   f"{DEFAULT_MODELS})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run checkpointed in OUT/fusion/checkpoint")
    p.add_argument("--cache", default=DEFAULT_CACHE,
                   help=f"query encoding cache (default {DEFAULT_CACHE})")
    p.add_argument("--epochs", type=int, help="override [train.fusion] epochs")
    p.add_argument("--seed", type=int, help="override [train.fusion] seed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_train_fusion)
    _register_train_ranker(kinds, _config_parent("[train.ranker] (and [retrieval]) tables"),
                           index)

    models = sub.add_parser("models", help="list, promote and roll back trained models")
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--models", "--out", dest="models", default=DEFAULT_MODELS,
                       help=f"models folder (default {DEFAULT_MODELS})")
    settings_only = _config_parent("the [retrieval] table (where the index is, its encoders)")
    p = actions.add_parser("list", parents=[settings_only, index, where],
                           help="artifacts with their metrics and where they serve")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models_list)
    p = actions.add_parser("promote", parents=[settings_only, index, where],
                           help="re-fuse the index with a version and switch it in (a "
                           "ranker: re-rank the index's search with it)")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("version", help="vNNNN or latest")
    p.set_defaults(handler=cmd_models_promote)
    p = actions.add_parser("rollback", parents=[settings_only, index, where],
                           help="back to the previously promoted version (or the "
                           "training-free fusion, or similarity order)")
    p.add_argument("kind", choices=KINDS)
    p.set_defaults(handler=cmd_models_rollback)

    p = sub.add_parser(
        "eval", parents=[_config_parent("the [retrieval] table (and [train.fusion] for "
                                        "--version none)"), index, where],
        help="evaluation report of a fusion head",
        description="Compare the training-free fusion, a ridge baseline and a trained fusion "
        "head (and, with --ranker, the head plus a ranking head) on held-out catalog queries "
        "(text -> photo ignoring titles, text -> product, photo -> same product) and, with "
        "--sessions, on held-out simulated sessions judged by their hidden truth; write "
        "report.md with plots.")
    p.add_argument("--version", default="latest",
                   help="vNNNN, latest (default), promoted (the one serving --index) or none "
                   "(no head: the training-free fusion, e.g. with --ranker alone)")
    p.add_argument("--ranker", help="also re-rank the trained head's results with this "
                   "ranking head: vNNNN, latest or promoted (the one serving --index)")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--sessions", metavar="LOG", help="also judge the systems on the held-out "
                   "simulated sessions of this event log (a `shopassist simulate` run the "
                   "models were not trained on): URL or SQLite file")
    p.add_argument("--truth", help="that simulation's ground truth (default: beside a SQLite "
                   "log, <name>.truth.json)")
    p.add_argument("--max-queries", type=int, help="judge only the log's first N queries")
    p.add_argument("--report", help="output folder (default reports/fusion-<version>)")
    p.add_argument("--cache", default=DEFAULT_CACHE)
    p.add_argument("--device", default=None, help="device for encoding uncached queries")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=cmd_eval)


def _config_parent(tables: str) -> argparse.ArgumentParser:
    """``--config``, whose help names the ``tables`` the command reads from the file."""
    parent = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the top-level --config (same TOML file) is kept when this one is not given.
    parent.add_argument("--config", default=argparse.SUPPRESS, help=f"TOML file with {tables}")
    return parent


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from retrieval.config import load_settings

    return load_settings(getattr(args, "config", None),
                         index_dir=Path(args.index) if args.index else None, **extra)


@contextlib.contextmanager
def _resume_hint(models: Path, kind: str) -> Iterator[None]:
    """On Ctrl-C, says how to continue when the run left a checkpoint (one per epoch)."""
    try:
        yield
    except KeyboardInterrupt:
        if _unfinished_checkpoint(models / kind / "checkpoint"):
            print(f"training stopped; `shopassist train {kind} --resume` (with the same "
                  f"--out {models} and config) continues from the last checkpoint",
                  file=sys.stderr)
        raise


def _unfinished_checkpoint(folder: Path) -> bool:
    try:
        return not json.loads((folder / "state.json").read_text()).get("finished", True)
    except (OSError, ValueError):
        return False


def _summarise_run(what: str, result: Any, as_json: bool) -> bool:
    """Prints a finished training run's summary (JSON, or its first lines); ``True`` when
    nothing more is to be printed: JSON was asked, or this is not the main process."""
    if result.version is None:  # not the main process of a distributed run
        return True
    if as_json:
        print(json.dumps({"version": result.version, "artifact": str(result.artifact),
                          "stopped": result.stopped, "epochs": result.epochs,
                          "steps": result.steps, "seconds": round(result.seconds, 1),
                          "metrics": result.metrics, "data": result.data},
                         indent=2, default=str))
        return True
    print(f"{what} {result.version} -> {result.artifact}")
    print(f"  {result.epochs} epochs, {result.steps} steps ({result.stopped}), "
          f"{result.seconds:.0f} s in all")
    return False


def cmd_train_fusion(args: argparse.Namespace) -> int:
    from training.fusion import train_fusion
    from training.fusion_config import load_fusion_config

    out, cache = output_folder(args.out, "--out"), output_folder(args.cache, "--cache")
    config = load_fusion_config(getattr(args, "config", None), epochs=args.epochs,
                                seed=args.seed)
    settings = _settings(args, device=None if args.device == "auto" else args.device)
    with _resume_hint(out, "fusion"):
        result = train_fusion(settings.index_dir, config, out, device=args.device,
                              resume=args.resume, cache_dir=cache, settings=settings)
    if _summarise_run("fusion head", result, args.json):
        return 0
    test = result.metrics.get("test", {})
    for kind, label, metric in (("text_photo", "text -> photo NDCG@10", "NDCG@10"),
                                ("text_product", "text -> product NDCG@10", "NDCG@10"),
                                ("photo", "photo -> product R@1", "R@1")):
        if kind in test:
            print(f"  test {label}: {test[kind][metric]:.3f}")
    print(f"promote it with: shopassist models promote fusion {result.version}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from training.registry import ModelRegistry

    registry = ModelRegistry(output_folder(args.models, "--models"))
    entries = registry.entries("fusion")
    rankers = registry.entries("ranker")
    if args.json:
        print(json.dumps([{"kind": e.kind, "version": e.version, "path": str(e.path),
                           "created": e.created, "metrics": e.metrics,
                           "data_snapshot": e.data_snapshot, "sha256": e.sha256,
                           "error": e.error, "promoted_for": list(e.promoted_for)}
                          for e in [*entries, *rankers]], indent=2))
        return 0
    if not entries and not rankers:
        print(f"no models in {registry.root} (train one with `shopassist train fusion` or "
              "`shopassist train ranker`)")
        return 0
    if not entries:
        _print_rankers(rankers)
        return 0
    print(f"{'kind':<7} {'version':<8} {'created':<21} {'t->photo':>8} {'t->prod':>8} "
          f"{'photo R@1':>9} {'tail':>6}  status")
    for e in entries:
        test = e.metrics.get("test", {})
        tail = e.metrics.get("photo_tail") or {}
        # the photo tail's gain in validation photo R@1 over the untuned encoder, if kept
        gain = (f"+{tail['valid_R@1'] - tail['untuned_valid_R@1']:.3f}"
                if tail.get("best_epoch") else "-")

        def fig(kind: str, metric: str, test: dict = test) -> str:
            value = test.get(kind, {}).get(metric)
            return f"{value:.3f}" if value is not None else "-"

        status = "CORRUPT: " + e.error if e.error else (
            "promoted: " + ", ".join(e.promoted_for) if e.promoted_for else "")
        print(f"{e.kind:<7} {e.version:<8} {e.created:<21} {fig('text_photo', 'NDCG@10'):>8} "
              f"{fig('text_product', 'NDCG@10'):>8} {fig('photo', 'R@1'):>9} {gain:>6}  "
              f"{status}")
    if rankers:
        _print_rankers(rankers)
    return 0


def _register_train_ranker(kinds: Any, config: argparse.ArgumentParser,
                           index: argparse.ArgumentParser) -> None:
    p = kinds.add_parser(
        "ranker", parents=[config, index], help="the ranking head (click, purchase, dwell)",
        description="Train the multi-task ranking head on logged impressions (features of "
        "the query, the product, the engine's scores and the shopper's session; ESMM click "
        "and purchase losses with inverse-propensity weights, and dwell) and register it "
        "under OUT/ranker/vNNNN with the co-interaction table of the same log.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="a `shopassist dataset` folder")
    source.add_argument("--log", "--db", dest="log",
                        help="an event log, SQLite path or URL (the dataset is built from it; "
                        "under torchrun spell it --db, as torchrun reads --log* itself)")
    p.add_argument("--out", default=DEFAULT_MODELS, help=f"models folder (default "
                   f"{DEFAULT_MODELS})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run checkpointed in OUT/ranker/checkpoint")
    p.add_argument("--epochs", type=int, help="override [train.ranker] epochs")
    p.add_argument("--seed", type=int, help="override [train.ranker] seed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_train_ranker)


def cmd_train_ranker(args: argparse.Namespace) -> int:
    from training.ranker import train_ranker
    from training.ranker_config import load_ranker_config

    out = output_folder(args.out, "--out")
    config = load_ranker_config(getattr(args, "config", None), epochs=args.epochs,
                                seed=args.seed)
    settings = _settings(args)
    with _resume_hint(out, "ranker"):
        result = train_ranker(settings.index_dir, config, out,
                              source=args.dataset or args.log, device=args.device,
                              resume=args.resume)
    if _summarise_run("ranker", result, args.json):
        return 0
    dropped = result.data.get("dropped_unknown_products", 0)
    if dropped:
        print(f"  {dropped:,} of {dropped + result.data.get('rows', 0):,} logged impressions "
              f"left out: their products are not in {settings.index_dir}")
    for key, what in (("test_shuffled", "lists shown shuffled"), ("test", "lists as shown")):
        for label in ("purchased", "clicked"):
            figure = _ndcg_pair(result.metrics.get(key, {}), label)
            if figure != "-":
                print(f"  test NDCG@10 of {label} items on {what}, ranker / similarity: "
                      f"{figure}")
    print("  (lists shown in the engine's order favour the engine's order; shuffled ones do "
          "not; judge it with `shopassist eval --ranker VERSION [--sessions LOG]` before "
          "promoting)")
    print(f"promote it with: shopassist models promote ranker {result.version}")
    _print_cautions(result.version, result.metrics)
    return 0


def _ndcg_pair(metrics: Mapping[str, Any], label: str = "purchased") -> str:
    """``ranker / similarity (n lists)`` NDCG@10 of one test figure, or ``-``."""
    ours, base = metrics.get(f"ranker {label}"), metrics.get(f"similarity {label}")
    if ours is None or base is None:
        return "-"
    return f"{ours:.3f} / {base:.3f} ({int(metrics.get(f'queries {label}', 0)):,})"


def _print_rankers(entries: list[Any]) -> None:
    # Lists shown in the engine's order favour that order; lists shown shuffled (the
    # simulator's --explore, the app's [assistant] explore) do not.
    print(f"{'':<38} {'NDCG@10 of purchases, ranker / similarity (lists)':>49}")
    print(f"{'kind':<7} {'version':<8} {'created':<21} {'explored lists':>24} "
          f"{'as shown':>24}  status")
    for e in entries:
        status = "CORRUPT: " + e.error if e.error else (
            "promoted: " + ", ".join(e.promoted_for) if e.promoted_for else "")
        print(f"{e.kind:<7} {e.version:<8} {e.created:<21} "
              f"{_ndcg_pair(e.metrics.get('test_shuffled', {})):>24} "
              f"{_ndcg_pair(e.metrics.get('test', {})):>24}  {status}")


def cmd_models_promote(args: argparse.Namespace) -> int:
    from training.registry import ModelRegistry

    settings = _settings(args)
    registry = ModelRegistry(args.models)
    if registry.serving(args.kind, args.version, settings):
        print(f"{args.kind} {registry.path(args.kind, args.version).name} already serves "
              f"{settings.index_dir}; nothing to do")
        return 0
    index_version = registry.promote(args.kind, args.version, settings)
    path = registry.path(args.kind, args.version)
    print(f"{args.kind} {path.name} now serves {settings.index_dir} (index version "
          f"{index_version})")
    if args.kind == "ranker":
        [entry] = [e for e in registry.entries("ranker") if e.version == path.name]
        _print_cautions(path.name, entry.metrics)
    return 0


def _print_cautions(version: str, metrics: dict[str, Any]) -> None:
    from training.registry import ranker_cautions

    for caution in ranker_cautions(version, metrics):
        print(f"warning: {caution}", file=sys.stderr)


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from training.registry import ModelRegistry

    settings = _settings(args)
    target, index_version = ModelRegistry(args.models).rollback(args.kind, settings)
    what = target or ("similarity order (no ranker)" if args.kind == "ranker"
                      else "the training-free fusion")
    print(f"{settings.index_dir} is back on {what} (index version {index_version})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.fusion_report import (
        evaluate_artifact,
        evaluate_session_log,
        write_report,
    )
    from training.registry import ModelRegistry

    report_dir = output_folder(args.report, "--report") if args.report else None
    cache = output_folder(args.cache, "--cache")
    settings = _settings(args, device=args.device)
    registry = ModelRegistry(args.models)
    version = args.version
    if version == "promoted":
        version = registry.promoted("fusion", settings)
        if version is None:
            raise ValueError(f"No fusion head is promoted for {settings.index_dir}; pass "
                             "--version (none: the training-free fusion only).")
    artifact = None if version == "none" else registry.path("fusion", version)
    ranker = None
    if args.ranker:
        ranker_version = registry.promoted("ranker", settings) \
            if args.ranker == "promoted" else args.ranker
        if ranker_version is None:
            raise ValueError(f"No ranker is promoted for {settings.index_dir}; pass "
                             "--ranker vNNNN.")
        ranker = registry.path("ranker", ranker_version)
    if args.max_queries is not None and args.max_queries < 1:
        raise ValueError(f"--max-queries must be at least 1 (got {args.max_queries}).")
    if args.sessions:  # checked before the catalog queries' minutes of work
        from assistant.eventlog import EventLog
        from assistant.eventlog.engine import is_memory, resolve_url
        from training.cli import default_truth_path
        from training.truth import SimulationTruth

        url = resolve_url(args.sessions)
        if url.get_backend_name() == "sqlite" and not is_memory(url) \
                and not Path(str(url.database)).is_file():
            raise ValueError(f"No event log at {url.database}: --sessions takes the log "
                             "`shopassist simulate --db` wrote.")
        truth = Path(args.truth) if args.truth else default_truth_path(args.sessions)
        if not truth.is_file():
            raise ValueError(f"No ground truth at {truth}: pass --truth, the file `shopassist "
                             "simulate` saved beside the log.")
        # A damaged truth file or a log that is no database is named now, not after the
        # catalog queries' minutes of work.
        SimulationTruth.load(truth)
        with EventLog.open(args.sessions, create=False):
            pass
    config = None
    if artifact is None:
        from training.fusion_config import load_fusion_config

        config = load_fusion_config(getattr(args, "config", None))
    results = evaluate_artifact(settings.index_dir, artifact, settings,
                                cache_dir=cache, split=args.split, ranker=ranker,
                                config=config)
    if args.sessions:
        results.sessions = evaluate_session_log(settings.index_dir, artifact, settings,
                                                args.sessions, truth, ranker=ranker,
                                                max_queries=args.max_queries)
    name = artifact.name if artifact is not None else "none"
    out = report_dir or Path("reports") / f"fusion-{name}"
    report = write_report(results, out)
    if args.json:
        print(json.dumps(results.systems, indent=2))
    else:
        print(report.read_text())
        print(f"report: {report}")
    return 0
