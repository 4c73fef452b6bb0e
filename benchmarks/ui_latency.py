"""Shop page latency in a real browser: from pressing "send" on a photo to the product
cards on screen, p50 / p95 over N turns.

Starts ``shopassist serve --index DIR --llm rules`` on a free local port (event log in a
temporary file, the index opened read-only), loads the page once in Debian's Chromium
(playwright-core, tests/ui/browser/shop.js) to warm the models, then sends N shopper
photos one per turn in one browser session and times each:

- *cards*: the new result list's cards are in the page (the shopper sees titles, prices);
- *photos*: every photo in those cards is decoded too.

Query photos are the larger ``fashion_300px`` photos of products in the index, on a random
coloured background, rotated and re-compressed like a shopper's (``shopper_photos``).

    python -m benchmarks.ui_latency --index /work/cache/idx44k --turns 20

Needs ``/usr/bin/chromium`` and ``npm ci`` in tests/ui/browser. Target: p50 ≤ 1.5 s on
2 CPU cores (offline profile, 44k products, rules mode).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.shopper_photos import shopper_photo

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "ui" / "browser"
PHOTOS_300PX = (ROOT / ".." / "shared" / "data" / "fashion_300px" / "images").resolve()
DEFAULT_INDEX = Path("data/bench/index44k")
TARGET_P50_MS = 1500.0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def machine_line() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True,
                              text=True).stdout.strip().splitlines()
    return (f"{dt.date.today().isoformat()} · {cpu} · {cores} cores · Python "
            f"{platform.python_version()} · {chromium[-1] if chromium else 'chromium ?'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query_photos(index: Path, folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` shopper-style photos of products that are in the index."""
    from retrieval.artifacts import read_products
    from retrieval.manifest import IndexLayout

    layout = IndexLayout(index)
    ids = {p.product_id for p in read_products(layout.version_dir()).products}
    candidates = sorted(p for p in PHOTOS_300PX.glob("*.jpg") if p.stem in ids)
    if not candidates:
        raise SystemExit(f"No photos in {PHOTOS_300PX} match products of {index}.")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    out = []
    for i, row in enumerate(chosen):
        with Image.open(candidates[row]) as image:
            photo = shopper_photo(image.convert("RGB"), rng)
        path = folder / f"shopper-{i:02d}-{candidates[row].stem}.jpg"
        photo.save(path, quality=85)
        out.append(path)
    return out


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"shopassist serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")


def drive(url: str, photos: list[Path], turns: int) -> list[dict[str, float]]:
    done = subprocess.run(
        ["node", "shop.js", "--url", url, "--turns", str(turns), "--timeout", "120000",
         *[arg for p in photos for arg in ("--photo", str(p))]],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=60 + 120 * turns)
    if done.returncode != 0:
        raise SystemExit(f"the browser run failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/chromium").exists() or shutil.which("node") is None or not (
            BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        raise SystemExit("Needs /usr/bin/chromium, node and `npm ci` in tests/ui/browser.")
    script = Path(sys.executable).with_name("shopassist")
    with tempfile.TemporaryDirectory(prefix="ui-latency-") as tmp:
        folder = Path(tmp)
        photos = query_photos(args.index, folder, args.turns, args.seed)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "SHOPASSIST_LOG_DB": f"sqlite:///{folder / 'events.sqlite'}"}
        env.pop("SHOPASSIST_UI_FACTORY", None)
        log = (folder / "serve.log").open("wb")
        server = subprocess.Popen([str(script), "serve", "--index", str(args.index), "--port",
                                   str(port), "--llm", "rules"], cwd=folder, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(url, server, 120)
            drive(url, photos[:1], 1)  # warm-up: the first visit loads the models
            turns = drive(url, photos, args.turns)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
            log.close()
    cards = [t["cards_ms"] for t in turns]
    images = [t["images_ms"] for t in turns]
    print(f"Shop page, photo → product cards in Chromium ({len(turns)} turns, one session, "
          f"rules mode, index {args.index})")
    print(machine_line())
    print()
    print("| measured until | p50 ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|")
    for label, values in (("cards on screen", cards), ("cards + their photos", images)):
        print(f"| {label} | {percentile(values, 50):.0f} | {percentile(values, 95):.0f} | "
              f"{max(values):.0f} |")
    p50 = percentile(cards, 50)
    verdict = "meets" if p50 <= TARGET_P50_MS else "misses"
    print(f"\ncards p50 {p50:.0f} ms {verdict} the {TARGET_P50_MS:.0f} ms target; "
          f"cards per turn: {min(t['cards'] for t in turns)}–{max(t['cards'] for t in turns)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "turns": turns}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
