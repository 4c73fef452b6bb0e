"""End to end in a real browser: ``shopassist serve`` on a free port, Debian's Chromium
driven by playwright-core (tests/ui/browser/shop.js) attaches a product photo to the chat
input, sends it and waits for the product cards; the screenshot is kept in
``test-artifacts/``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the node package
(``npm ci`` in tests/ui/browser); ``.ci/run`` installs both. Skipped, with the reason,
when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts"
START_TIMEOUT_S = 120

pytestmark = pytest.mark.slow


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or ``None``."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node is missing (apt-get install -y nodejs)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed (cd {BROWSER_DIR} && npm ci)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shopassist_command() -> list[str]:
    script = Path(sys.executable).with_name("shopassist")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from retrieval.cli import main; "
            "sys.exit(main())"]


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"shopassist serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the app at {url} did not answer within {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stops ``shopassist serve`` and the Streamlit process it started (its own group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def served(ui_engine, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``shopassist serve`` over the module's small index; yields (URL, event log file)."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("served")
    log_file = folder / "events.sqlite"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHOPASSIST_LLM": "rules",
           "SHOPASSIST_LOG_DB": f"sqlite:///{log_file}", "SHOPASSIST_DISPLAY_IMAGES_DIR": "",
           "SHOPASSIST_DEVICE": "cpu"}
    env.pop("SHOPASSIST_UI_FACTORY", None)
    output = (folder / "serve.log").open("wb")
    process = subprocess.Popen(
        [*shopassist_command(), "serve", "--index", str(ui_engine.settings.index_dir),
         "--port", str(port)], cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, START_TIMEOUT_S)
        yield url, log_file
    finally:
        stop(process)
        output.close()
        print((folder / "serve.log").read_text(errors="replace")[-3000:])


def test_a_photo_sent_in_chromium_shows_product_cards(served, ui_engine):
    from assistant.eventlog.store import EventLog

    url, log_file = served
    photo = ui_engine.products[4].image
    screenshot = ARTIFACTS / "shop-photo-turn.png"
    screenshot.unlink(missing_ok=True)
    done = subprocess.run(
        ["node", "shop.js", "--url", url, "--photo", photo, "--screenshot", str(screenshot),
         "--timeout", "90000"], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    turn = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"photo to cards: {turn['cards_ms']} ms, photos shown: {turn['images_ms']} ms")
    assert turn["cards"] >= 1
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    with EventLog.open(f"sqlite:///{log_file}", create=False) as log:
        counts = log.counts()
    assert counts["queries"] >= 1 and counts["impressions"] >= turn["cards"]
