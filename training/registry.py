"""The model registry: versioned artifacts on disk, and which one serves which index.

Layout of a models folder::

    models/
      fusion/
        v0001/            head.safetensors, head.json (config, data snapshot, metrics),
                          history.json (loss curves)
        v0002/
        checkpoint/       the running (or last) training run's checkpoint
        promotions.json   per index: the stack of promoted versions and a log

An artifact appears under its version only when complete (written in a staging folder,
then renamed). Promoting re-fuses the index with the head and switches it in atomically
(:func:`retrieval.refuse.refuse`); rolling back re-fuses with the previously promoted head,
or with the training-free fusion when there is none.

Rankers (``ranker/vNNNN``: ``ranker.safetensors``, ``ranker.json``) re-fuse nothing:
promoting one copies it into the index root and names it in the index's ``RANKER`` file
(:func:`retrieval.ranker.serve_ranker`), which the engine reads when it opens; rolling back
names the previous one, or removes ``RANKER`` (similarity order again).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.config import Settings
from retrieval.fusion_head import ArtifactError, load_head
from retrieval.manifest import IndexLayout, read_manifest
from retrieval.publish import HEAD_DIR
from retrieval.ranker import (
    RANKERS_DIR,
    load_ranker,
    serve_ranker,
    serving_ranker_dir,
    stop_serving_ranker,
)

logger = logging.getLogger(__name__)

KINDS = ("fusion", "ranker")
# Per kind: the loader that verifies an artifact, and its metadata file.
_ARTIFACTS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "fusion": (load_head, "head.json"), "ranker": (load_ranker, "ranker.json")}
PROMOTIONS = "promotions.json"
HISTORY = "history.json"
_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ModelEntry:
    """One artifact as ``models list`` shows it."""

    kind: str
    version: str
    path: Path
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    data_snapshot: str = ""
    sha256: str = ""
    error: str = ""  # why the artifact cannot be used ("" when it loads)
    promoted_for: tuple[str, ...] = ()


# Held-out lists with a purchase, shown shuffled, below which a ranker's test figures are
# noise: at 30 the standard error of a mean NDCG@10 is still about 0.05.
MIN_JUDGED_LISTS = 30


def ranker_cautions(version: str, metrics: dict[str, Any]) -> list[str]:
    """What a shop should know before serving ranker ``version``, from its test figures
    (empty when nothing stands out).

    Lists shown in the engine's order favour the engine's order, so only the lists shown
    shuffled (exploration traffic) can show a ranker is worse than similarity order, and
    only when there are enough of them (:data:`MIN_JUDGED_LISTS`).
    """
    shuffled = metrics.get("test_shuffled") or {}
    judged = int(shuffled.get("queries purchased", 0) or 0)
    check = f"`shopassist eval --ranker {version} --sessions LOG`"
    if judged < MIN_JUDGED_LISTS:
        return [f"ranker {version} was judged on {judged} held-out list(s) with a purchase "
                f"shown shuffled (fewer than {MIN_JUDGED_LISTS}): its test figures cannot tell "
                "it from similarity order. Log more exploration traffic ([assistant] explore, "
                f"or `shopassist simulate --explore`) and retrain, or judge it with {check}."]
    ours, base = shuffled.get("ranker purchased"), shuffled.get("similarity purchased")
    if ours is not None and base is not None and ours < base:
        return [f"ranker {version} ranks held-out purchases below similarity order on "
                f"{judged} lists shown shuffled (NDCG@10 {ours:.3f} vs {base:.3f}): serving it "
                f"would likely sell less. Judge it with {check}, or roll it back with "
                "`shopassist models rollback ranker`."]
    return []


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; known: {', '.join(KINDS)}.")
    return kind


def _index_key(settings: Settings) -> str:
    return str(Path(settings.index_dir).resolve())


class ModelRegistry:
    """Artifacts under ``root/<kind>/<version>/`` and their promotions."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, kind: str) -> Path:
        return self.root / _check_kind(kind)

    def checkpoint_dir(self, kind: str) -> Path:
        return self.folder(kind) / "checkpoint"

    def versions(self, kind: str) -> list[str]:
        """Complete versions, oldest first."""
        folder = self.folder(kind)
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if _VERSION.match(p.name) and p.is_dir()]
        return sorted(names, key=lambda n: int(n[1:]))

    def path(self, kind: str, version: str) -> Path:
        """The folder of ``version`` (``latest`` is the newest).

        Raises:
            ValueError: No such version (the message lists the known ones).
        """
        known = self.versions(kind)
        if version == "latest" and known:
            version = known[-1]
        if version not in known:
            raise ValueError(f"No {kind} model {version!r} in {self.folder(kind)}; known: "
                             f"{', '.join(known) or 'none (train one with `shopassist train '}"
                             f"{'' if known else kind + '`)'}.")
        return self.folder(kind) / version

    def publish(self, kind: str, write: Callable[[Path], Any]) -> tuple[str, Path]:
        """Writes a new artifact with ``write(folder)`` and gives it the next version.

        The folder is renamed into place only once ``write`` returned, so a listed version
        is always complete.
        """
        folder = self.folder(kind)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{os.getpid()}-{time.time_ns()}"
        staging.mkdir()
        try:
            write(staging)
            for _ in range(100):
                numbers = [int(v[1:]) for v in self.versions(kind)]
                version = f"v{max(numbers, default=0) + 1:04d}"
                try:
                    os.rename(staging, folder / version)  # fails if another run took it
                except OSError:
                    continue
                return version, folder / version
            raise RuntimeError(f"Could not name a new version in {folder}.")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    # -- listing ------------------------------------------------------------------------------

    def entries(self, kind: str) -> list[ModelEntry]:
        """Every version with its metrics, and whether it loads (hash and shapes checked)."""
        promotions = self._read_promotions(kind)
        serving: dict[str, list[str]] = {}
        for index, record in promotions.get("indexes", {}).items():
            if record.get("stack"):
                serving.setdefault(record["stack"][-1], []).append(index)
        out = []
        for version in self.versions(kind):
            path = self.folder(kind) / version
            meta: dict[str, Any] = {}
            error = ""
            load, meta_file = _ARTIFACTS[kind]
            try:
                meta = load(path)[1]
            except ArtifactError as exc:
                error = str(exc)
                try:
                    meta = json.loads((path / meta_file).read_text())
                except (OSError, json.JSONDecodeError):
                    meta = {}
            out.append(ModelEntry(kind, version, path, str(meta.get("created", "")),
                                  dict(meta.get("metrics", {})),
                                  str(meta.get("data_snapshot", "")),
                                  str(meta.get("sha256", "")), error,
                                  tuple(serving.get(version, []))))
        return out

    # -- promotion ----------------------------------------------------------------------------

    def _promotions_path(self, kind: str) -> Path:
        return self.folder(kind) / PROMOTIONS

    def _read_promotions(self, kind: str) -> dict[str, Any]:
        try:
            return json.loads(self._promotions_path(kind).read_text())
        except FileNotFoundError:
            return {"indexes": {}}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self._promotions_path(kind)} is corrupt ({exc}); restore or "
                             "delete it (promotions are also recorded in each index's "
                             "manifest).") from None

    def _write_promotions(self, kind: str, data: dict[str, Any]) -> None:
        path = self._promotions_path(kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{PROMOTIONS}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)

    def promoted(self, kind: str, settings: Settings) -> str | None:
        """The version promoted for the index of ``settings`` (``None``: training-free)."""
        record = self._read_promotions(kind)["indexes"].get(_index_key(settings), {})
        stack = record.get("stack", [])
        return stack[-1] if stack else None

    def serving(self, kind: str, version: str, settings: Settings) -> bool:
        """Whether ``version`` (``latest`` allowed) is promoted for the index of ``settings``
        and is what the index serves now (the same weights).

        Raises:
            ValueError: Unknown version.
        """
        path = self.path(kind, version)
        if self.promoted(kind, settings) != path.name:
            return False
        sha = _recorded_sha256(path, kind)
        if sha is None:
            return False
        if kind == "ranker":
            served = serving_ranker_dir(settings.index_dir)
            return (served is not None and served.name == path.name
                    and _recorded_sha256(served, kind) == sha)
        fusion = read_manifest(IndexLayout(Path(settings.index_dir)).version_dir())["fusion"]
        return fusion.get("kind") == "learned-head" and fusion.get("sha256") == sha

    def promote(self, kind: str, version: str, settings: Settings, *,
                show: bool | None = None) -> str:
        """Re-fuses the index with ``version`` (a ranker: puts it in front of the index's
        search) and records it as promoted; nothing is done when it already serves
        (:meth:`serving`): promoting it again rebuilt the index and pushed a duplicate on
        the rollback stack.

        Returns:
            The index version now serving.

        Raises:
            ValueError: Unknown version.
            ArtifactError: The artifact is corrupted or was trained for other slots
                (nothing is switched or recorded).
        """
        from retrieval.refuse import refuse

        path = self.path(kind, version)
        version = path.name
        if self.serving(kind, version, settings):
            logger.info("%s %s already serves %s", kind, version, settings.index_dir)
            return IndexLayout(Path(settings.index_dir)).version_dir().name
        if kind == "ranker":
            # a mistyped --index is refused, not given a ranker of its own
            index_version = IndexLayout(Path(settings.index_dir)).version_dir().name
            serve_ranker(settings.index_dir, path, version)  # verifies it first
            self._record(kind, settings, "promote", version, index_version)
            logger.info("ranker %s now re-ranks %s", version, settings.index_dir)
            return index_version
        load_head(path)  # refuse a corrupted artifact before any work
        index_version, seconds = refuse(settings, path, show=show)
        self._record(kind, settings, "promote", version, index_version)
        logger.info("promoted %s %s on %s as %s in %.1f s", kind, version, settings.index_dir,
                    index_version, seconds)
        return index_version

    def rollback(self, kind: str, settings: Settings, *, show: bool | None = None
                 ) -> tuple[str | None, str]:
        """Goes back to the previously promoted version, or the training-free fusion.

        Returns:
            The version now serving (``None``: training-free) and the index version.

        Raises:
            ValueError: Nothing to roll back (the index already uses the training-free
                fusion and nothing was promoted).
            ArtifactError: The previous artifact no longer loads.
        """
        from retrieval.refuse import refuse

        data = self._read_promotions(kind)
        stack = list(data["indexes"].get(_index_key(settings), {}).get("stack", []))
        if kind == "ranker":
            IndexLayout(Path(settings.index_dir)).version_dir()  # there is an index there
            return self._rollback_ranker(settings, stack)
        if not stack:
            fusion = read_manifest(IndexLayout(Path(settings.index_dir)).version_dir())["fusion"]
            if fusion.get("kind") != "learned-head":
                raise ValueError(f"Nothing to roll back: {settings.index_dir} already serves "
                                 "the training-free fusion.")
        else:
            stack.pop()
        target = stack[-1] if stack else None
        path = self._previous("fusion", settings, target) if target else None
        if path is not None:
            load_head(path)
        index_version, _ = refuse(settings, path, show=show)
        self._record(kind, settings, "rollback", target, index_version, stack=stack)
        return target, index_version

    def _rollback_ranker(self, settings: Settings, stack: list[str]
                         ) -> tuple[str | None, str]:
        if not stack and serving_ranker_dir(settings.index_dir) is None:
            raise ValueError(f"Nothing to roll back: {settings.index_dir} is served in "
                             "similarity order (no ranker promoted).")
        if stack:
            stack.pop()
        target = stack[-1] if stack else None
        if target is not None:
            serve_ranker(settings.index_dir, self._previous("ranker", settings, target), target)
        else:
            stop_serving_ranker(settings.index_dir)
        index_version = IndexLayout(Path(settings.index_dir)).current() or ""
        self._record("ranker", settings, "rollback", target, index_version, stack=stack)
        return target, index_version

    def _previous(self, kind: str, settings: Settings, version: str) -> Path:
        """The artifact of a previously promoted ``version``: the models folder's, or, when
        that was deleted, the copy the index kept — a ranker's under the index's rankers/,
        a fusion head's inside the index versions it fused (the index keeps the two newest,
        so the one before the serving version is there).

        Raises:
            ValueError: Neither exists (the message says how to go on).
        """
        own = self.folder(kind) / version
        if kind == "ranker":
            kept = [Path(settings.index_dir) / RANKERS_DIR / version]
            where = f"nor kept in {kept[0].parent}"
        else:
            log = self._read_promotions(kind)["indexes"].get(_index_key(settings), {})
            layout = IndexLayout(Path(settings.index_dir))
            kept = [layout.versions_dir / e["index_version"] / HEAD_DIR
                    for e in reversed(log.get("log", [])) if e.get("version") == version]
            where = f"nor kept by an index version of {settings.index_dir}"
        for path in (own, *kept):
            if path.is_dir():
                if path != own:
                    logger.info("%s %s is not in %s; using the copy in %s", kind, version,
                                self.folder(kind), path)
                return path
        what = "ranker" if kind == "ranker" else "fusion head"
        raise ValueError(f"Cannot roll back to {what} {version}: it is neither in "
                         f"{self.folder(kind)} {where}. Restore it, or promote another "
                         f"(`shopassist models promote {kind} VERSION`); nothing was changed.")

    def _record(self, kind: str, settings: Settings, action: str, version: str | None,
                index_version: str, stack: list[str] | None = None) -> None:
        data = self._read_promotions(kind)
        record = data["indexes"].setdefault(_index_key(settings), {"stack": [], "log": []})
        if stack is not None:
            record["stack"] = stack
        elif version is not None:
            record["stack"].append(version)
        record["log"].append({"action": action, "version": version,
                              "index_version": index_version,
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self._write_promotions(kind, data)


def _recorded_sha256(folder: Path, kind: str) -> str | None:
    """The weights' sha256 that an artifact folder's metadata records (``None``: unreadable)."""
    try:
        return json.loads((folder / _ARTIFACTS[kind][1]).read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        return None
