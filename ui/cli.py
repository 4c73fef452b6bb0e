"""The app's ``shopassist`` sub-commands: ``serve``, ``demo`` and ``users hash-password``.

Found through the ``shopassist.commands`` entry point group. ``serve`` runs
``python -m streamlit run ui/app.py`` as a child process, passing the index, LLM and
display settings through ``SHOPASSIST_*`` environment variables, so the app reads the same
settings as every other command. Streamlit is imported only in the child.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parent / "app.py"
DEMO_CATALOG = Path("../shared/data/fashion/catalog_5k.csv")
DEFAULT_PORT = 8501
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SAMPLE_QUERIES = ("red dress for women under 1500", "black sports shoes for men",
                  "blue jeans between 500 and 1500", "watch for women")
EXIT_USAGE = 2


def register(sub: Any) -> None:
    """Entry point for ``shopassist.commands``: ``serve``, ``demo``, ``users``."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--index", help="index folder (default: settings.index_dir, "
                        "data/index)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    server.add_argument("--llm", metavar="SPEC", help="rules, hf:<model id or folder>, or "
                        "openai:<model>; default: settings.llm (rules)")

    p = sub.add_parser("serve", parents=[server], help="run the Streamlit app",
                       description="Serve the shop (chat with photos), the staff Support "
                       "page and the analysts' Insights page on one port.")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("demo", parents=[server],
                       help="index the demo catalog, then serve the app",
                       description="Index a catalog (default: the 5,000-product demo "
                       "catalog in ../shared) with the best profile that loads here, then "
                       "serve the app over it.")
    p.add_argument("--catalog", default=str(DEMO_CATALOG),
                   help=f"catalog to index (default: {DEMO_CATALOG})")
    p.add_argument("--profile", choices=["auto", "clip", "offline"], default=None,
                   help="encoders (default: settings.profile, auto)")
    p.add_argument("--no-serve", action="store_true",
                   help="print sample searches and exit instead of serving")
    p.set_defaults(handler=cmd_demo)

    users = sub.add_parser("users", help="staff accounts for the Support and Insights pages")
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    p = actions.add_parser("hash-password", help="print a password hash for secrets.toml",
                           description="Reads a password (without echo, twice) and prints "
                           "its scrypt hash for [users.<name>] password_hash in "
                           ".streamlit/secrets.toml or SHOPASSIST_USERS.")
    p.add_argument("--stdin", action="store_true",
                   help="read the password from the first line of standard input (scripts)")
    p.set_defaults(handler=cmd_hash_password)


def app_command(*, host: str, port: int, python: str = sys.executable) -> list[str]:
    """The child command line that serves the app."""
    return [python, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false"]


def app_environment(*, index: str | None, llm: str | None,
                    base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the caller's plus the settings given as flags."""
    env = dict(os.environ if base is None else base)
    if index:
        env["SHOPASSIST_INDEX_DIR"] = str(Path(index).resolve())
    if llm:
        env["SHOPASSIST_LLM"] = llm
    config = env.get("SHOPASSIST_CONFIG")
    if config:
        env["SHOPASSIST_CONFIG"] = str(Path(config).resolve())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("ANONYMIZED_TELEMETRY", "False")
    return env


def url_of(host: str, port: int) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _check_index(args: argparse.Namespace) -> None:
    from retrieval.config import load_settings
    from retrieval.manifest import IndexLayout, IndexNotFoundError

    settings = load_settings(getattr(args, "config", None),
                             index_dir=Path(args.index) if args.index else None)
    if IndexLayout(Path(settings.index_dir)).current() is None:
        raise IndexNotFoundError(
            f"No index at {settings.index_dir}. Build one with `shopassist ingest CATALOG "
            f"--index {settings.index_dir}` (or `shopassist demo`), then serve it.")


def _check_port(host: str, port: int) -> None:
    """Refuses a port that is out of range or already taken, before anything starts
    (Streamlit would print the URL and then fail with "Port N is not available")."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port} is not a port number (1..65535).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}): another "
                             "program (or Shop Assistant) holds the port, or the host is not "
                             "an address of this machine. Pick another with --port N or "
                             "--host.") from None


def _check_app_settings(args: argparse.Namespace) -> None:
    """Reads the app's settings as the app will, so that a bad ``[assistant]`` table or LLM
    spec fails here, not on the shopper's first message."""
    from assistant.config import load_assistant_settings
    from assistant.llm import parse_spec

    parse_spec(load_assistant_settings(getattr(args, "config", None), llm=args.llm).llm)


def _check_serving(args: argparse.Namespace) -> None:
    if getattr(args, "config", None):
        os.environ["SHOPASSIST_CONFIG"] = str(args.config)
    _check_port(args.host, args.port)
    _check_app_settings(args)


def serve(args: argparse.Namespace) -> int:
    """Runs the app until it exits or Ctrl-C."""
    _check_serving(args)
    _check_index(args)
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: the shop is reachable from the network. "
              "Put it behind a TLS reverse proxy and configure staff logins.",
              file=sys.stderr)
    command = app_command(host=args.host, port=args.port)
    env = app_environment(index=args.index, llm=args.llm)
    print(f"Shop Assistant: {url_of(args.host, args.port)}  (Ctrl-C stops)", flush=True)
    child = subprocess.Popen(command, env=env)
    # A service manager stops us with SIGTERM: stop the app too (the finally below).
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            child.wait()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    """``shopassist serve [--index DIR] [--port N] [--host H] [--llm SPEC]``."""
    return serve(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """``shopassist demo [--catalog FILE] [--no-serve]``: index, then serve."""
    from retrieval.config import load_settings
    from retrieval.ingest import ingest

    catalog = Path(args.catalog)
    if not args.no_serve:  # before minutes of indexing
        _check_serving(args)
    if not catalog.is_file():
        raise FileNotFoundError(
            f"Demo catalog {catalog} not found (it comes with ../shared/data). Point the demo "
            "at any catalog: `shopassist demo --catalog my_products.csv` (CSV, JSONL or "
            "Parquet; see README, 'Your own catalog' and 'The app').")
    settings = load_settings(getattr(args, "config", None),
                             index_dir=Path(args.index) if args.index else None,
                             profile=args.profile)
    print(f"Indexing {catalog} into {settings.index_dir} (the first run encodes every photo; "
          "later runs reuse them)...", flush=True)
    print(ingest(catalog, settings=settings).summary(), flush=True)
    if args.no_serve:
        return _print_samples(settings)
    args.index = str(settings.index_dir)
    return serve(args)


def _print_samples(settings: Any) -> int:
    from retrieval.search import SearchEngine

    engine = SearchEngine.open(settings=settings)
    for text in SAMPLE_QUERIES:
        print(f"\n$ shopassist search --text {text!r}")
        result = engine.search(text=text, k=5)
        if result.relaxed:
            print("  (relaxed: " + ", ".join(result.relaxed) + ")")
        for hit in result.hits:
            p = hit.product
            price = f"{p.price:,.0f} {p.currency}" if p.price is not None else "-"
            print(f"  {hit.rank:>2}. {p.product_id:>8}  {p.title[:56]:<56} {price:>12}")
        if not result.hits:
            print("  no results")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """``shopassist users hash-password [--stdin]``."""
    from ui.passwords import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the passwords differ.", file=sys.stderr)
            return EXIT_USAGE
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(hashed)
    if sys.stderr.isatty():
        print('\nIn .streamlit/secrets.toml:\n[users.NAME]\npassword_hash = "<the line above>"'
              '\nrole = "staff"   # or analyst, admin', file=sys.stderr)
    return 0
