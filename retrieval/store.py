"""The Chroma side of an index: client, collection, chunked writes, filtered queries.

Embedded ``PersistentClient`` by default; with ``chroma_host`` set (``CHROMA_HOST``), an
``HttpClient`` to a server started with ``chroma run`` — the same code path otherwise.
Collections are created in cosine space with no embedding function: we bring our own
vectors, and Chroma must never try to download its default ONNX model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import HnswParams, Settings

logger = logging.getLogger(__name__)

# Chroma rejects a write of more than ~5,461 records (its SQLite variable cap).
MAX_BATCH = 5000


class StoreError(RuntimeError):
    """The vector store cannot be reached or is not what the manifest says."""


def chroma_client(settings: Settings, path: Path | None) -> Any:
    """An embedded client at ``path``, or an HTTP client when ``settings.chroma_host`` is set.

    Raises:
        StoreError: The server does not answer (with the host and port tried).
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_host:
        try:
            client = chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port,
                                         settings=chroma_settings)
            client.heartbeat()
        except Exception as exc:
            raise StoreError(
                f"No Chroma server answers at {settings.chroma_host}:{settings.chroma_port} "
                f"({exc}). Start one with `chroma run --path DIR --port {settings.chroma_port}`"
                " or unset CHROMA_HOST to use the embedded store."
            ) from exc
        return client
    if path is None:
        raise ValueError("An embedded Chroma store needs a path.")
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


def hnsw_configuration(hnsw: HnswParams) -> dict[str, Any]:
    return {"hnsw": {"space": hnsw.space, "max_neighbors": hnsw.max_neighbors,
                     "ef_construction": hnsw.ef_construction, "ef_search": hnsw.ef_search}}


def chunks(n: int, size: int = MAX_BATCH) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass(frozen=True)
class Hits:
    """Nearest neighbours of one query: ids, cosine similarities, metadata (best first)."""

    ids: list[str]
    similarities: np.ndarray
    metadatas: list[Mapping[str, Any]]


class VectorStore:
    """One Chroma collection holding the fused product vectors and filterable metadata."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    @classmethod
    def create(cls, client: Any, name: str, hnsw: HnswParams,
               metadata: Mapping[str, Any] | None = None) -> VectorStore:
        """Creates a fresh collection (an existing one of that name is replaced)."""
        with contextlib.suppress(Exception):
            client.delete_collection(name)
        collection = client.create_collection(
            name=name, embedding_function=None, configuration=hnsw_configuration(hnsw),
            metadata=dict(metadata or {}) or None)
        return cls(collection)

    @classmethod
    def open(cls, client: Any, name: str) -> VectorStore:
        """Opens an existing collection.

        Raises:
            StoreError: It does not exist (with the fix).
        """
        try:
            return cls(client.get_collection(name, embedding_function=None))
        except Exception as exc:
            raise StoreError(
                f"The index's Chroma collection {name!r} is missing from the store ({exc}). "
                "Rebuild the index with `shopassist ingest CATALOG`."
            ) from exc

    def add(self, ids: Sequence[str], vectors: np.ndarray,
            metadatas: Sequence[Mapping[str, Any]], progress: Any = None) -> None:
        """Writes records in chunks under Chroma's batch cap."""
        if not (len(ids) == len(vectors) == len(metadatas)):
            raise ValueError("ids, vectors and metadatas must have the same length.")
        for part in chunks(len(ids)):
            self.collection.add(ids=list(ids[part]), embeddings=vectors[part],
                                metadatas=[dict(m) for m in metadatas[part]])
            if progress is not None:
                progress.update(part.stop - part.start)

    def count(self) -> int:
        return int(self.collection.count())

    def query(self, vector: np.ndarray, n: int, where: Mapping[str, Any] | None = None,
              *, metadata: bool = False) -> Hits:
        """The ``n`` nearest records to ``vector`` passing ``where``; similarity = 1 - distance.

        ``metadata`` also fetches each record's metadata (else ``{}``): the engine keeps
        its own product table, and fetching metadata doubles the cost of a 300-record query.
        """
        result = self.collection.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)], n_results=max(1, n),
            where=dict(where) if where else None,
            include=["distances", "metadatas"] if metadata else ["distances"])
        ids = result["ids"][0]
        distances = np.asarray(result["distances"][0], dtype=np.float32)
        found = (result.get("metadatas") or [None])[0] if metadata else None
        return Hits(ids=list(ids), similarities=1.0 - distances,
                    metadatas=list(found or [{}] * len(ids)))
