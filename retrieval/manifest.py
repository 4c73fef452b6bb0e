"""Index versions on disk: the manifest, the ``CURRENT`` pointer and the atomic switch.

Layout of an index root::

    index/
      CURRENT                 name of the version that serves queries ("v0003")
      versions/
        v0003/                a complete, immutable version
          manifest.json       the embedding contract and what was built from what
          products.parquet    the products, in row order of the vectors
          vectors.safetensors per-slot vectors (float16), row-aligned with products
          chroma/             the embedded Chroma store (absent with a Chroma server)
          issues.csv          rows that were skipped and why
        .build-v0004-<pid>/   a build in progress (or one that was killed)

A build writes everything into its ``.build-*`` folder, renames it to its final name, then
replaces ``CURRENT`` with ``os.replace`` (atomic on POSIX). A reader resolves ``CURRENT``
once when it opens, so a build killed at any point leaves the previous version serving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = 1
_VERSION = re.compile(r"^v(\d{4,})$")
_BUILD = re.compile(r"^\.build-(v\d{4,})-(\d+)$")


class IndexStateError(RuntimeError):
    """The index is incomplete, corrupt or was built with different encoders."""


class IndexNotFoundError(IndexStateError):
    """There is no (complete) index where one was expected."""


@dataclass(frozen=True)
class IndexLayout:
    """Paths of an index root and its versions."""

    root: Path

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def current_file(self) -> Path:
        return self.root / "CURRENT"

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if _VERSION.match(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        """The serving version's name, or ``None`` when nothing was ever built.

        Raises:
            IndexStateError: The root is a file.
        """
        self.check_root()
        try:
            name = self.current_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def check_root(self) -> None:
        """Refuses a root that cannot hold an index: a file, or one version's folder.

        Raises:
            IndexStateError: The root is a file, or a version folder of another index.
        """
        if self.root.exists() and not self.root.is_dir():
            raise IndexStateError(f"{self.root} is a file, not an index folder: give the "
                                  "folder that `shopassist ingest` built (or a new one).")
        if self.root.parent.name == "versions" and (self.root / "manifest.json").is_file():
            owner = self.root.parent.parent
            raise IndexStateError(f"{self.root} is version {self.root.name} of the index at "
                                  f"{owner}: give --index {owner}.")

    def version_dir(self, version: str | None = None) -> Path:
        """The folder of ``version`` (default: the serving one).

        Raises:
            IndexNotFoundError: No index at this root, or the named version is gone.
        """
        version = version or self.current()
        if version is None:
            raise IndexNotFoundError(
                f"No index at {self.root}. Build one with `shopassist ingest CATALOG --index "
                f"{self.root}`."
            )
        path = self.versions_dir / version
        if not (path / "manifest.json").is_file():
            raise IndexNotFoundError(
                f"Index version {version} at {self.root} is incomplete or missing. Rebuild with "
                "`shopassist ingest CATALOG`."
            )
        return path

    def next_version(self) -> str:
        numbers = [int(v[1:]) for v in self.versions()]
        numbers += [int(m.group(1)[1:]) for p in self._builds() if (m := _BUILD.match(p.name))]
        return f"v{max(numbers, default=0) + 1:04d}"

    def _builds(self) -> list[Path]:
        if not self.versions_dir.is_dir():
            return []
        return [p for p in self.versions_dir.iterdir() if _BUILD.match(p.name)]

    def start_build(self) -> tuple[str, Path]:
        """Reserves the next version and returns its name and its private build folder."""
        self.check_root()
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.remove_dead_builds()
        version = self.next_version()
        path = self.versions_dir / f".build-{version}-{os.getpid()}"
        path.mkdir()
        return version, path

    def commit(self, version: str, build_dir: Path) -> Path:
        """Publishes a finished build: rename into place, then switch ``CURRENT`` atomically."""
        final = self.versions_dir / version
        _fsync_tree(build_dir)
        os.replace(build_dir, final)
        self.switch(version)
        return final

    def switch(self, version: str) -> None:
        """Points ``CURRENT`` at ``version`` (an atomic file replace)."""
        if not (self.versions_dir / version / "manifest.json").is_file():
            raise IndexNotFoundError(f"Cannot switch to {version}: it is not a complete version.")
        tmp = self.root / f".CURRENT.{os.getpid()}"
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.current_file)
        _fsync_dir(self.root)

    def remove_dead_builds(self) -> list[Path]:
        """Deletes build folders whose process is gone (builds that were killed)."""
        removed = []
        for path in self._builds():
            match = _BUILD.match(path.name)
            assert match is not None
            pid = int(match.group(2))
            if pid != os.getpid() and _alive(pid):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def prune(self, keep: int = 2) -> list[str]:
        """Deletes all but the newest ``keep`` versions, never the serving one."""
        current = self.current()
        old = [v for v in self.versions()[:-keep] if v != current] if keep > 0 else []
        for version in old:
            shutil.rmtree(self.versions_dir / version, ignore_errors=True)
        return old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        if file.is_file():
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    data = {"format": MANIFEST_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()), **manifest}
    (folder / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n",
                                          encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    """Reads and checks a version's manifest.

    Raises:
        IndexNotFoundError: Missing, unreadable, or of a format this code does not know.
    """
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexNotFoundError(f"{path} is missing; rebuild the index.") from None
    except json.JSONDecodeError as exc:
        raise IndexNotFoundError(f"{path} is corrupt ({exc}); rebuild the index.") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise IndexNotFoundError(
            f"{path} has format {data.get('format')!r}; this version of shop-assistant reads "
            f"format {MANIFEST_FORMAT}. Rebuild the index with `shopassist ingest`."
        )
    return data


def check_contract(manifest: Mapping[str, Any], contract: list[dict[str, Any]]) -> None:
    """Refuses to query an index with encoders other than those it was built with.

    Raises:
        IndexStateError: Encoder name, revision, dimension or photo preparation differ;
            the message lists them.
    """
    from retrieval.preprocess import PhotoNormaliser

    legacy = manifest.get("normaliser")

    def key(c: Mapping[str, Any], fallback: Any) -> tuple[Any, ...]:
        prepared = c.get("normaliser") or (fallback if c.get("source") == "image" else None)
        prep = PhotoNormaliser.from_dict(prepared).to_dict() if prepared else None
        return (c["slot"], c["encoder"], c["revision"], c["dim"], json.dumps(prep))

    built = [key(c, legacy) for c in manifest["slots"]]
    have = [key(c, None) for c in contract]
    if built != have:
        lines = [f"  built with: {b}" for b in built] + [f"  opened with: {h}" for h in have]
        raise IndexStateError(
            "This index was built with other encoders than the ones loaded now:\n"
            + "\n".join(lines)
            + f"\nOpen it with --profile {manifest.get('profile')} (and the same models), or "
            "rebuild it with `shopassist ingest CATALOG --profile ...`."
        )
