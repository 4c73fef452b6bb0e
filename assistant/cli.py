"""The assistant's ``shopassist`` sub-commands (found through the ``shopassist.commands``
entry point group): ``chat`` (one turn or an interactive session), and ``logs purge`` /
``logs export`` over the event log.

Heavy imports (SQLAlchemy, pyarrow) happen inside the handlers, so listing the commands
stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_USAGE = 2


def register(sub: Any) -> None:
    """Entry point for ``shopassist.commands``: adds ``chat``, ``logs purge|export``."""
    p = sub.add_parser("chat", help="talk to the shopping assistant",
                       description="One turn with --message (and --image); an interactive "
                       "session without it. Type '/photo PATH' to attach a photo to your "
                       "next message, '/quit' to leave.")
    p.add_argument("--index", help="index folder (default: settings.index_dir)")
    p.add_argument("--llm", metavar="SPEC", help="rules, hf:<model id or folder>, or "
                   "openai:<model> (with SHOPASSIST_LLM_BASE_URL); default: settings.llm")
    p.add_argument("--persona", choices=["shopper", "support"], default="shopper")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="photo to send with --message (repeatable)")
    p.add_argument("--message", help="send one message and print the answer")
    p.add_argument("--json", action="store_true",
                   help="with --message: print answer, tool calls and products as JSON")
    p.add_argument("--no-log", action="store_true", help="do not record the conversation")
    p.add_argument("--device", help="auto, cpu, cuda, mps")
    p.set_defaults(handler=cmd_chat)

    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="URL|PATH", help="event log: a SQLite file path "
                    "(data/events.sqlite) or a database URL (sqlite:///PATH, "
                    "postgresql+psycopg://USER@HOST/DB); default: settings.log_db, "
                    "$SHOPASSIST_LOG_DB, data/events.sqlite")
    db.add_argument("--json", action="store_true", help="print the report as JSON")

    logs = sub.add_parser("logs", help="event log: purge old events, export for analysts",
                          description="Maintain the event log (conversations, searches, "
                          "impressions and feedback; personal data is masked when written).")
    actions = logs.add_subparsers(dest="logs_command", metavar="ACTION", required=True)

    p = actions.add_parser("purge", parents=[db], help="delete events older than a duration",
                           description="Delete every event older than the duration, with "
                           "the rows that depend on it (a conversation with its messages, "
                           "tool calls, searches and feedback).")
    p.add_argument("--older-than", required=True, metavar="DURATION",
                   help="e.g. 90d, 12h, 2w, 1d12h (at most 100 years, 36525d)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.set_defaults(handler=cmd_logs_purge)

    p = actions.add_parser("export", parents=[db], help="write tables to Parquet or CSV",
                           description="Write each event log table to OUT/<table>.<format> "
                           "plus OUT/manifest.json.")
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet",
                   help="file format (default: parquet)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--since", metavar="TIME", help="only events at or after TIME: a duration "
                   "ago (7d) or an ISO date (2024-05-01)")
    p.add_argument("--until", metavar="TIME", help="only events before TIME (same forms; "
                   "after --since)")
    p.add_argument("--tables", metavar="NAMES", help="comma-separated tables (default: all)")
    p.set_defaults(handler=cmd_logs_export)


def cmd_chat(args: argparse.Namespace) -> int:
    """``shopassist chat [--index DIR] [--llm SPEC] [--image PATH] [--message TEXT]``."""
    from assistant.factory import build_assistant
    from retrieval.images import ImageError

    if (args.image or args.json) and args.message is None:
        print("error: --image and --json go with --message (one turn).", file=sys.stderr)
        return EXIT_USAGE
    assistant = build_assistant(config=getattr(args, "config", None), index_dir=args.index,
                                llm=args.llm, device=args.device, with_log=not args.no_log)
    if assistant.notice and not args.json:
        print(f"note: {assistant.notice}", file=sys.stderr)
    chat = assistant.conversation(persona=args.persona)
    if args.message is not None:
        try:
            result = chat.turn(args.message, photos=args.image)
        except ImageError as exc:
            return _fail(exc)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str))
        else:
            _print_turn(result)
        return 0
    return _interactive(chat)


def _print_turn(result: Any) -> None:
    print(result.answer)
    if result.fallback_reason:
        print(f"(the language model failed: {result.fallback_reason}; answered by rules)",
              file=sys.stderr)


def _interactive(chat: Any) -> int:
    from retrieval.images import ImageError

    print("Shop assistant. Ask for products, send '/photo PATH' to attach a photo, "
          "'/quit' to leave.")
    photos: list[str] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line.startswith("/photo "):
            photos.append(line[len("/photo "):].strip())
            print(f"(photo attached: {photos[-1]}; now type your message)")
            continue
        if not line and not photos:
            continue
        try:
            result = chat.turn(line, photos=photos)
        except ImageError as exc:
            print(f"That photo can't be used: {exc}")
            photos = []
            continue
        photos = []
        print("assistant> " + result.answer.replace("\n", "\n           "))


def _open_log(args: argparse.Namespace) -> Any:
    from assistant.config import load_assistant_settings
    from assistant.eventlog.store import EventLog

    settings = load_assistant_settings(getattr(args, "config", None), log_db=args.db)
    # Maintenance never creates a log: a mistyped --db should fail, not purge an empty file.
    return EventLog.open(settings.log_db, create=False)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def cmd_logs_purge(args: argparse.Namespace) -> int:
    """``shopassist logs purge --older-than 90d [--db URL] [--dry-run] [--json]``."""
    from assistant.eventlog.engine import EventLogError
    from assistant.eventlog.retention import parse_duration, purge

    try:
        age = parse_duration(args.older_than)
        with _open_log(args) as log:
            counts = purge(log, age, dry_run=args.dry_run, show=None)
            where = log.url
    except EventLogError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps({"db": where, "older_than": args.older_than, "dry_run": args.dry_run,
                          "deleted": counts}, indent=2))
        return 0
    verb = "Would delete" if args.dry_run else "Deleted"
    print(f"{verb} events older than {args.older_than} from {where}:")
    for table, n in counts.items():
        print(f"  {table:<14} {n:>9}")
    return 0


def cmd_logs_export(args: argparse.Namespace) -> int:
    """``shopassist logs export --format parquet|csv --out DIR [--since T] [--db URL]``."""
    from assistant.eventlog.engine import EventLogError
    from assistant.eventlog.retention import check_window, export, parse_time
    from retrieval.paths import output_folder

    # Every argument is checked before the log is read.
    out = output_folder(args.out, "--out")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    check_window(since, until)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    try:
        with _open_log(args) as log:
            written = export(log, out, fmt=args.format, since=since, until=until,
                             tables=tables)
            where = log.url
    except EventLogError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps({"db": where, "format": args.format,
                          "since": since.isoformat() if since else None,
                          "until": until.isoformat() if until else None,
                          "tables": {n: {"path": str(e.path), "rows": e.rows}
                                     for n, e in written.items()}}, indent=2))
        return 0
    print(f"Exported {where} to {out}:")
    for name, exported in written.items():
        print(f"  {name:<14} {exported.rows:>9} rows  {exported.path}")
    return 0
