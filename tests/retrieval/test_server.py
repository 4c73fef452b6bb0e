"""Chroma server mode: the same code path against a real ``chroma run`` on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.ingest import ingest
from retrieval.manifest import IndexLayout, read_manifest
from retrieval.search import SearchEngine
from retrieval.store import StoreError, chroma_client

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chroma_binary() -> str:
    here = Path(sys.executable).parent / "chroma"
    found = str(here) if here.exists() else shutil.which("chroma")
    if not found:
        pytest.skip("the `chroma` command (chromadb) is not installed")
    return found


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """A real Chroma server on a free local port, stopped after the module."""
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([_chroma_binary(), "run", "--path", str(data / "db"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chroma run exited: {(data / 'server.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("chroma run did not listen within 60 s")
    yield "127.0.0.1", port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_ingest_and_search_through_a_chroma_server(chroma_server, settings, clip_profile,
                                                   catalog):
    host, port = chroma_server
    server_settings = settings.replace(chroma_host=host, chroma_port=port)
    report = ingest(catalog, settings=server_settings, profile=clip_profile, progress=False)
    assert report.products == 40
    folder = IndexLayout(settings.index_dir).version_dir()
    manifest = read_manifest(folder)
    assert manifest["store"]["kind"] == "server"
    assert manifest["store"]["port"] == port
    assert not (folder / "chroma").exists(), "server mode keeps no embedded store"
    collections = [c.name for c in chroma_client(server_settings, None).list_collections()]
    assert manifest["store"]["collection"] in collections

    # The manifest is enough to find the server again (no CHROMA_HOST needed).
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert engine.store.count() == 40
    result = engine.search(text="blue jeans for women", k=5)
    assert result.hits and all(h.product.category == "Jeans" for h in result.hits)
    photo = engine.search(image=catalog.parent / "images" / "P0004.jpg", k=2)
    # P0034 may be drawn pixel-identical to P0004 (same shape, colour and jitter).
    assert "P0004" in [h.product.product_id for h in photo.hits]
    assert photo.hits[0].scores["clip_image"] == pytest.approx(1.0, abs=1e-3)

    # Old versions' collections are dropped from the server when pruned.
    for _ in range(3):
        ingest(catalog, settings=server_settings, profile=clip_profile, progress=False,
               force=True)
    names = {c.name for c in chroma_client(server_settings, None).list_collections()}
    assert manifest["store"]["collection"] not in names
    assert len([n for n in names if n.startswith(manifest["store"]["collection"][:-5])]) == 2


def test_unreachable_server_is_a_clear_error(settings):
    dead = settings.replace(chroma_host="127.0.0.1", chroma_port=_free_port())
    started = time.perf_counter()
    with pytest.raises(StoreError, match="chroma run"):
        chroma_client(dead, None)
    assert time.perf_counter() - started < 30
