"""The ``shopassist`` command: a dispatcher plus the search engine's own sub-commands.

Every package contributes sub-commands through the ``shopassist.commands`` entry point
group (see ``pyproject.toml``), so this module never imports the packages built on top of
``retrieval``. This module registers ``ingest``, ``search``, ``recommend`` and ``doctor``
(``demo`` and ``serve`` come with the app, ``ui.cli``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger("shopassist")

EXIT_USAGE = 2


def setup_logging(verbose: int = 0) -> None:
    """One logging set-up per process: warnings by default, ``-v`` info, ``-vv`` debug.

    Progress on long work is always reported: off a terminal, where no bar is drawn, its
    log line every 10 % (:mod:`retrieval.progress`) is what a redirected build shows.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("retrieval.progress").setLevel(min(level, logging.INFO))
    try:  # transformers' "Loading weights" bars are noise on every model load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    for noisy in ("chromadb", "httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _user_errors() -> tuple[type[BaseException], ...]:
    from retrieval.catalog import CatalogError
    from retrieval.encoders import ModelUnavailableError
    from retrieval.filters import FilterError
    from retrieval.images import ImageError
    from retrieval.manifest import IndexStateError
    from retrieval.store import StoreError

    errors: tuple[type[BaseException], ...] = (
        CatalogError, ModelUnavailableError, FilterError, ImageError, IndexStateError,
        StoreError, ValueError, KeyError, FileNotFoundError)
    try:  # the event log's (a missing or newer log file), when the assistant is installed
        from assistant.eventlog.engine import EventLogError
    except ImportError:
        return errors
    return (*errors, EventLogError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shopassist`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(
        prog="shopassist", description="Shop Assistant: multimodal product search and chat.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    parser.add_argument("--config", help="TOML config file (default: $SHOPASSIST_CONFIG or "
                        "./shopassist.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in metadata.entry_points(group="shopassist.commands"):
        try:
            register = entry.load()
        except ImportError as exc:  # a package's optional dependencies are missing
            logger.debug("commands from %s unavailable: %s", entry.name, exc)
            continue
        register(sub)
    if not metadata.entry_points(group="shopassist.commands"):
        register_commands(sub)  # running from a source tree that was never installed
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def register_commands(sub: Any) -> None:
    """Adds the search engine's sub-commands to the ``shopassist`` parser."""
    register(sub)


def register(sub: Any) -> None:
    """Entry point for ``shopassist.commands``: ingest, search, recommend, doctor."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--index", help="index folder (default: settings.index_dir, "
                        "data/index)")
    common.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")

    p = sub.add_parser("ingest", parents=[common], help="index a catalog (CSV/JSONL/Parquet)",
                       description="Build a new index version from a catalog and switch it "
                       "in atomically; unchanged content is not re-encoded.")
    p.add_argument("catalog", help="catalog file")
    p.add_argument("--profile", choices=["auto", "clip", "offline"],
                   help="encoders (default: settings.profile, auto)")
    p.add_argument("--mapping", help="column mapping: a named one (fashion) or a TOML/JSON "
                   "file")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="map one field to a column (repeatable), e.g. --map product_id=SKU")
    p.add_argument("--limit", type=int, help="read at most N rows")
    p.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("search", parents=[common], help="search the index",
                       description="Search by photo, words or both. Without --image/--text "
                       "and on a terminal, opens an interactive session.")
    p.add_argument("--image", help="query photo (path or URL)")
    p.add_argument("--text", help="query words; constraints like 'in red', 'under 80' "
                   "become filters")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="colour=Red, gender=Women, category=Dresses, price<=1500, "
                   "price=500..1500, in_stock=true (repeatable)")
    p.add_argument("--k", type=int, default=10, help="number of results (1..200)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("recommend", parents=[common], help="similar or complementary items")
    p.add_argument("product_id")
    p.add_argument("--mode", choices=["similar", "complementary"], default="similar")
    p.add_argument("--k", type=int, default=10, help="number of results (1..200)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_recommend)

    p = sub.add_parser("doctor", parents=[common],
                       help="what is installed, which device, which profiles load here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_doctor)


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from retrieval.config import load_settings

    return load_settings(getattr(args, "config", None), index_dir=_path(args.index),
                         device=args.device, **extra)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_ingest(args: argparse.Namespace) -> int:
    from retrieval.catalog import load_mapping, mapping_from_dict
    from retrieval.ingest import ingest

    settings = _settings(args, profile=args.profile, batch_size=args.batch_size)
    mapping = None
    if args.mapping:
        mapping = load_mapping(args.mapping)
    if args.map:
        pairs = dict(_split_pair(m) for m in args.map)
        mapping = mapping_from_dict({"fields": pairs}, name="--map")
    report = ingest(args.catalog, settings=settings, mapping=mapping, limit=args.limit,
                    force=args.force)
    if args.json:
        print(json.dumps({
            "index": str(report.index), "version": report.version, "profile": report.profile,
            "products": report.products, "rows_read": report.rows_read,
            "up_to_date": report.up_to_date, "seconds": round(report.seconds, 2),
            "encoded_images": report.encoded_images, "reused_images": report.reused_images,
            "encoded_texts": report.encoded_texts, "reused_texts": report.reused_texts,
            "issues": [{"row": i.row, "product_id": i.product_id, "reason": i.reason}
                       for i in report.issues]}, indent=2))
    else:
        print(report.summary())
    return 0


def _split_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"--map takes FIELD=COLUMN (got {text!r}).")
    return key.strip(), value.strip()


def _open_engine(args: argparse.Namespace) -> Any:
    from retrieval.search import SearchEngine

    return SearchEngine.open(settings=_settings(args))


def _print_hits(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dicts(), indent=2, ensure_ascii=False))
        return
    if result.filters and not result.filters.is_empty():
        print("filters: " + "; ".join(result.filters.describe()))
    if result.relaxed:
        print("nothing matched every constraint; relaxed: " + ", ".join(result.relaxed))
    if not result.hits:
        print("no results")
        return
    for hit in result.hits:
        p = hit.product
        price = f"{p.price:,.0f} {p.currency}" if p.price is not None else "-"
        print(f"{hit.rank:>3}. {hit.score:6.3f}  {p.product_id:>8}  {p.title[:60]:<60} "
              f"{price:>12}")
        if hit.why:
            print(f"{'':>18}why: {'; '.join(hit.why[:4])}")


def cmd_search(args: argparse.Namespace) -> int:
    from retrieval.filters import parse_filter_args

    filters = parse_filter_args(args.filter)
    engine = _open_engine(args)
    if args.image is None and args.text is None and filters.is_empty():
        if not sys.stdin.isatty():
            raise ValueError("Give --image, --text or --filter (or run on a terminal for an "
                             "interactive session).")
        return _interactive(engine)
    result = engine.search(image=args.image, text=args.text, filters=filters, k=args.k)
    _print_hits(result, args.json)
    return 0


def _interactive(engine: Any) -> int:
    print(f"Index {engine.version}: {len(engine):,} products (profile "
          f"{engine.manifest['profile']}). Type words, or 'photo PATH [words]'. "
          "Empty line or Ctrl-D quits.")
    errors = _user_errors()
    while True:
        try:
            line = input("search> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        image = None
        words: str | None = line
        if line.startswith("photo "):
            parts = shlex.split(line[6:])
            image, words = (parts[0], " ".join(parts[1:]) or None) if parts else (None, None)
        try:
            result = engine.search(image=image, text=words, k=8)
        except errors as exc:
            print(f"error: {exc}")
            continue
        _print_hits(result, as_json=False)
        print(f"({result.timings_ms.get('total', 0):.0f} ms)")


def cmd_recommend(args: argparse.Namespace) -> int:
    from retrieval.recommend import complementary, similar

    engine = _open_engine(args)
    fn = similar if args.mode == "similar" else complementary
    _print_hits(fn(engine, args.product_id, k=args.k), args.json)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from retrieval.doctor import diagnose, render

    report = diagnose(_settings(args))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def version_info() -> dict[str, str]:
    """Versions of the packages that matter, for ``doctor`` and bug reports."""
    out = {"python": platform.python_version()}
    for name in ("shop-assistant", "torch", "transformers", "sentence-transformers",
                 "chromadb", "numpy", "pillow", "langchain", "streamlit", "accelerate",
                 "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
