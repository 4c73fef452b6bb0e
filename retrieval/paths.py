"""Checks on folder paths given on the command line, so that a mistyped path fails at once.

A command that writes into a folder (a report, an export, a models folder, a cache) checks
the path before it does any work: a *file* where a folder is expected used to fail with a
traceback after minutes of evaluation or training.
"""

from __future__ import annotations

from pathlib import Path


def output_folder(path: str | Path, flag: str) -> Path:
    """Returns ``path`` as a :class:`Path` when it can be used as an output folder.

    The folder may be missing (the caller creates it) or exist; nothing is created here.

    Raises:
        ValueError: ``path``, or one of its parents, is a file.
    """
    folder = Path(path).expanduser()
    for candidate in (folder, *folder.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "" if candidate == folder else f" (its parent {candidate} is a file)"
            raise ValueError(f"{flag} {folder} is not a folder{where}: give the path of a "
                             "folder, which is created when it does not exist.")
        if candidate.exists():
            break
    return folder
