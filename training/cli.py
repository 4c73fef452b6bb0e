"""The learning loop's ``shopassist`` sub-commands: ``simulate`` and ``dataset``.

Found through the ``shopassist.commands`` entry point group (``pyproject.toml``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from retrieval.paths import output_folder

logger = logging.getLogger(__name__)

# Simulated traffic goes to its own database by default, never into the app's log.
DEFAULT_SIM_DB = "sqlite:///data/simulated-events.sqlite"


def register(sub: Any) -> None:
    """Entry point for ``shopassist.commands``: ``simulate``, ``dataset``."""
    p = sub.add_parser(
        "simulate", help="simulate shoppers into an event log",
        description="Run simulated shoppers with hidden preferences against the index: "
        "text and photo queries through the real search engine, clicks with position bias, "
        "add-to-cart, purchases and dwell, all written through the event log writer. The "
        "hidden ground truth is saved as JSON beside the log, before the first event, as "
        "the run goes and at its end (Ctrl-C included), so it knows the sessions the log "
        "holds. A log "
        "that already holds simulated sessions, or a truth file that exists, is refused "
        "unless --append: then this run (another --seed, the same settings and index) is "
        "added to the log and to its truth file, which keeps every run's shoppers.")
    p.add_argument("--sessions", type=int, required=True, help="number of sessions")
    p.add_argument("--index", help="index folder (default: settings.index_dir, data/index)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--db", default=DEFAULT_SIM_DB,
                   help=f"event log to write: a SQLite path or a database URL (default: "
                   f"{DEFAULT_SIM_DB})")
    p.add_argument("--truth", help="ground truth JSON (default: beside a SQLite log, "
                   "<name>.truth.json)")
    p.add_argument("--append", action="store_true", help="add this run to a log that "
                   "already holds simulated sessions, and to its truth file (needs another "
                   "--seed and the earlier runs' settings and index)")
    p.add_argument("--seed", type=int, default=0, help="seed, >= 0 (default 0)")
    p.add_argument("--shoppers", type=int, help="shopper population, >= 1 (default: "
                   "sessions / 3)")
    p.add_argument("--eta", type=float, help="position bias, >= 0: P(examine | rank) = "
                   "1 / rank^eta (default 1.0)")
    p.add_argument("--explore", type=float, help="share of result lists shown shuffled, "
                   "0..1 (default 0)")
    p.add_argument("--explore-depth", type=int, help="an explored list shows k products "
                   "drawn from the engine's top N, 10..1000 (default 10: the top 10 "
                   "shuffled; 50 shows a ranker the candidates search re-ranks)")
    p.add_argument("--photos", help="folder of larger product photos <id>.jpg (default: "
                   "../shared/data/fashion_300px/images when present, else the catalog's)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser(
        "dataset", help="build training tables from an event log",
        description="Read every impression with its feedback, estimate position-bias "
        "propensities from the log (randomised lists or regression-EM), add clipped "
        "inverse-propensity weights and a split by session, and write Parquet tables with "
        "their snapshot id.")
    p.add_argument("--db", required=True, help="event log to read: a SQLite path or "
                   "a database URL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--index", help="also write catalog self-supervision pairs from this "
                   "index folder")
    p.add_argument("--propensity", choices=["auto", "randomised", "regression-em",
                                            "click-ratio"], default="auto",
                   help="position-bias estimate: randomised lists when the log has enough "
                   "(lists logged with a '+shuffle' model version), else regression-EM "
                   "(default auto)")
    p.add_argument("--max-weight", type=float, default=10.0,
                   help="clip inverse-propensity weights to this (default 10)")
    p.add_argument("--json", action="store_true", help="print dataset.json")
    p.set_defaults(handler=cmd_dataset)


def default_truth_path(db: str) -> Path:
    """Beside a SQLite log (``events.sqlite`` -> ``events.truth.json``; a URL or a plain
    path), else the cwd."""
    from assistant.eventlog.engine import is_memory, resolve_url

    url = resolve_url(db)
    if url.get_backend_name() == "sqlite" and not is_memory(url):
        path = Path(str(url.database))
        return path.with_name(path.stem + ".truth.json")
    return Path("simulation.truth.json")


def check_simulate_args(args: argparse.Namespace) -> None:
    """Refuses out-of-range numbers before the index is opened, naming the flag and range.

    Raises:
        ValueError: A count, the seed or a behaviour setting outside its range.
    """
    from training.truth import SimConfig

    k = SimConfig().k
    ranges = [("--sessions", args.sessions, 1, None), ("--seed", args.seed, 0, None),
              ("--shoppers", args.shoppers, 1, None), ("--eta", args.eta, 0, None),
              ("--explore", args.explore, 0, 1),
              ("--explore-depth", args.explore_depth, k, 1000)]
    for flag, value, low, high in ranges:
        if value is None:
            continue
        if high is None and not low <= value < math.inf:  # NaN fails every comparison
            finite = " and finite" if isinstance(value, float) else ""
            raise ValueError(f"{flag} must be at least {low}{finite} (got {value}).")
        if high is not None and not low <= value <= high:
            raise ValueError(f"{flag} must be between {low} and {high} (got {value}).")


def truth_output(path: Path) -> Path:
    """``path`` when the ground truth can be written there (checked before simulating).

    Raises:
        ValueError: ``path`` is a folder, a parent is a file, or the folder is read-only.
    """
    if path.is_dir():
        raise ValueError(f"The ground truth path {path} is a folder: pass --truth with the "
                         f"JSON file to write, e.g. {path / 'events.truth.json'}.")
    parent = next(p for p in path.parents if p.exists())  # the folders below are created
    if not parent.is_dir():
        raise ValueError(f"Cannot write the ground truth to {path}: {parent} is a file, not a "
                         "folder; pass --truth with a path in a folder.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"Cannot write the ground truth to {path}: {parent} is not "
                         "writable; pass --truth with a path in a writable folder.")
    return path


def cmd_simulate(args: argparse.Namespace) -> int:
    from assistant.eventlog import EventLog
    from retrieval.config import load_settings
    from retrieval.search import SearchEngine
    from training.photos import DEFAULT_PHOTOS_DIR
    from training.simulate import SimulationSummary, simulate
    from training.truth import SimConfig, SimulationTruth

    check_simulate_args(args)
    overrides = {k: v for k, v in (("eta", args.eta), ("explore", args.explore),
                                   ("explore_depth", args.explore_depth)) if v is not None}
    config = SimConfig(**overrides)
    truth_path = truth_output(Path(args.truth) if args.truth else default_truth_path(args.db))
    if args.photos and not Path(args.photos).is_dir():
        raise ValueError(f"--photos {args.photos} is not a folder: give the folder of larger "
                         "product photos named <product_id>.jpg, or leave --photos out to "
                         "photograph the catalog's own.")
    photos = Path(args.photos) if args.photos else DEFAULT_PHOTOS_DIR
    settings = load_settings(getattr(args, "config", None),
                             index_dir=Path(args.index) if args.index else None,
                             device=args.device)
    engine = SearchEngine.open(settings=settings)
    with EventLog.open(args.db) as log:
        truth = simulate(engine, log, args.sessions, seed=args.seed, config=config,
                         shoppers=args.shoppers, photos_dir=photos, truth_path=truth_path,
                         append=args.append)
    summary = truth.summary
    runs = len(SimulationTruth.load(truth_path).seeds) if args.append else 1
    if args.json:
        print(json.dumps({**summary, "truth": str(truth_path), "db": args.db, "runs": runs},
                         indent=2))
    else:
        print(SimulationSummary.from_dict(summary).format())
        print(f"log: {args.db}\ntruth: {truth_path}"
              + (f" ({runs} runs: this one appended)" if runs > 1 else ""))
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from assistant.eventlog import EventLog
    from retrieval.artifacts import read_products
    from retrieval.config import load_settings
    from retrieval.manifest import IndexLayout
    from training.datasets import build_dataset, write_dataset

    out = output_folder(args.out, "--out")
    products = None
    if args.index:
        root = load_settings(getattr(args, "config", None), index_dir=Path(args.index)).index_dir
        products = read_products(IndexLayout(Path(root)).version_dir()).products
    with EventLog.open(args.db, create=False) as log:
        dataset = build_dataset(log, max_weight=args.max_weight, method=args.propensity)
    files = write_dataset(dataset, out, products)
    info = json.loads(files["info"].read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"snapshot {dataset.snapshot_id}: {info['rows']:,} impressions, "
          f"{info['queries']:,} queries, {info['sessions']:,} sessions")
    print("splits: " + ", ".join(f"{k} {v:,}" for k, v in info["splits"].items()))
    print("labels: " + ", ".join(f"{k} {v:,}" for k, v in info["labels"].items()))
    table = dataset.propensities
    print(f"propensity ({info['propensity']['method']}, weights clipped at "
          f"{args.max_weight:g}):")
    for row in table.itertuples(index=False):
        print(f"  rank {row.rank:>3}: {row.propensity:.3f}  (click ratio {row.click_ratio:.3f},"
              f" {row.impressions:,} shown, {row.clicks:,} clicks)")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
