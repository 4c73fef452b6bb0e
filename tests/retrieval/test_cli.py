"""The ``shopassist`` CLI contract: ingest, search --json, recommend, doctor, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.cli import main
from tests.conftest import write_catalog


@pytest.fixture
def cli_env(monkeypatch, tiny_clip_dir, tiny_sbert_dir, tmp_path):
    env = {"SHOPASSIST_PROFILE": "clip", "SHOPASSIST_CLIP_MODEL": str(tiny_clip_dir),
           "SHOPASSIST_TEXT_MODEL": str(tiny_sbert_dir), "SHOPASSIST_DEVICE": "cpu",
           "SHOPASSIST_PRECISION": "fp32", "SHOPASSIST_INDEX_DIR": str(tmp_path / "index"),
           "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SHOPASSIST_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return env


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_search_recommend(cli_env, capsys, tmp_path):
    catalog = write_catalog(tmp_path / "cat", n=24, bad_rows=True)
    code, out, _ = _run(capsys, "ingest", str(catalog), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["products"] == 24 and report["version"] == "v0001"
    assert {i["row"] for i in report["issues"]} == {25, 26, 27, 28, 29}

    code, out, _ = _run(capsys, "ingest", str(catalog))
    assert code == 0 and "up to date" in out

    code, out, _ = _run(capsys, "search", "--text", "blue jeans for women", "--k", "3",
                        "--json")
    assert code == 0
    hits = json.loads(out)
    assert 1 <= len(hits) <= 3
    assert {"product_id", "title", "score"} <= set(hits[0])
    assert all(h["category"] == "Jeans" for h in hits)

    image = str(catalog.parent / "images" / "P0005.jpg")
    code, out, _ = _run(capsys, "search", "--image", image, "--filter", "price<=1000",
                        "--json", "--k", "1")
    assert code == 0 and json.loads(out)[0]["product_id"] == "P0005"

    code, out, _ = _run(capsys, "search", "--text", "dress", "--filter", "colour=Green|Blue")
    assert code == 0 and "colour: Green or Blue" in out and "category: Dresses" in out

    code, out, _ = _run(capsys, "recommend", "P0005", "--json", "--k", "4")
    assert code == 0
    similar = json.loads(out)
    assert len(similar) == 4 and "P0005" not in {h["product_id"] for h in similar}


def test_user_errors_exit_2_with_a_message(cli_env, capsys, tmp_path):
    code, _, err = _run(capsys, "search", "--text", "shirt")
    assert code == 2 and "No index at" in err and "shopassist ingest" in err
    code, _, err = _run(capsys, "ingest", str(tmp_path / "missing.csv"))
    assert code == 2 and "does not exist" in err
    catalog = write_catalog(tmp_path / "cat", n=8)
    assert _run(capsys, "ingest", str(catalog))[0] == 0
    code, _, err = _run(capsys, "search", "--filter", "price<=cheap")
    assert code == 2 and "not a number" in err
    code, _, err = _run(capsys, "search", "--image", str(tmp_path / "nope.jpg"))
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "recommend", "NOPE")
    assert code == 2 and "No product with id 'NOPE'" in err
    code, _, err = _run(capsys, "ingest", str(catalog), "--map", "nonsense")
    assert code == 2 and "FIELD=COLUMN" in err


def test_mistyped_arguments_are_refused_before_any_work(cli_env, capsys, tmp_path):
    catalog = write_catalog(tmp_path / "cat", n=8)
    # A folder, a negative limit or a zero batch size: refused, and no index is started.
    code, _, err = _run(capsys, "ingest", str(catalog.parent))
    assert code == 2 and "is a folder" in err and "catalog file in it" in err
    code, _, err = _run(capsys, "ingest", str(catalog), "--limit", "-5")
    assert code == 2 and "limit must be at least 1" in err
    code, _, err = _run(capsys, "ingest", str(catalog), "--batch-size", "0")
    assert code == 2 and "'batch_size' must be at least 1" in err
    code, _, err = _run(capsys, "ingest", str(catalog), "--device", "gpu")
    assert code == 2 and "Unknown device 'gpu'" in err
    assert not (tmp_path / "index").exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not an index")
    code, _, err = _run(capsys, "ingest", str(catalog), "--index", str(a_file))
    assert code == 2 and "is a file, not an index folder" in err
    assert a_file.read_text() == "not an index"

    assert _run(capsys, "ingest", str(catalog))[0] == 0
    version = tmp_path / "index" / "versions" / "v0001"
    code, _, err = _run(capsys, "search", "--text", "shirt", "--index", str(version))
    assert code == 2 and f"give --index {tmp_path / 'index'}" in err
    code, _, err = _run(capsys, "search", "--text", "shirt", "--index", str(a_file))
    assert code == 2 and "is a file" in err
    # A mistyped filter key used to match nothing, like an empty catalog.
    code, _, err = _run(capsys, "search", "--text", "shirt", "--filter", "colr=Red")
    assert code == 2 and "Unknown filter 'colr' (did you mean colour?)" in err
    for k in ("0", "-3", "201"):
        code, _, err = _run(capsys, "recommend", "P0001", "--k", k)
        assert code == 2 and "k must be between 1 and 200" in err
        code, _, err = _run(capsys, "recommend", "P0001", "--k", k, "--mode",
                            "complementary")
        assert code == 2 and "k must be between 1 and 200" in err


def test_ingest_with_a_column_mapping(cli_env, capsys, tmp_path):
    catalog = tmp_path / "shop.csv"
    images = tmp_path / "img"
    images.mkdir()
    from tests.conftest import COLOURS, draw_product

    draw_product("Tshirts", COLOURS["Red"]).save(images / "a.jpg")
    catalog.write_text("SKU,Name,Cost,Photo\nA1,Red tee,12.5,img/a.jpg\nA2,Plain mug,4,\n")
    code, _, err = _run(capsys, "ingest", str(catalog))
    assert code == 2 and "--map product_id=SKU" in err
    code, out, _ = _run(capsys, "ingest", str(catalog), "--map", "product_id=SKU",
                        "--map", "title=Name", "--map", "price=Cost", "--map", "image=Photo",
                        "--json")
    assert code == 0 and json.loads(out)["products"] == 2


def test_doctor_reports_profiles(cli_env, capsys):
    code, out, _ = _run(capsys, "doctor", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["profiles"]["offline"]["ok"] is True
    assert report["profiles"]["clip"]["ok"] is True  # the tiny CLIP folder from the env
    assert report["hub"]["reachable"] is False
    assert report["index"]["ok"] is False and "No index" in report["index"]["why"]


@pytest.mark.slow
def test_console_script(cli_env, tmp_path):
    exe = shutil.which("shopassist", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("shopassist is not installed in this environment")
    catalog = write_catalog(tmp_path / "cat", n=8)
    env = {**os.environ, **cli_env}
    built = subprocess.run([exe, "ingest", str(catalog)], check=True, env=env,
                           capture_output=True, text=True)
    # Off a terminal there is no bar: the build still reports its progress, as log lines.
    assert "images: 8/8 img (100%" in built.stderr and "store: 8/8 vec" in built.stderr
    proc = subprocess.run([exe, "search", "--text", "red", "--json"], env=env,
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)[0]["product_id"].startswith("P")
    proc = subprocess.run([exe, "search"], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "interactive" in proc.stderr
