"""The fusion head's commands end to end: ``train`` under ``torchrun``, ``models`` and ``eval``.

Everything goes through the real ``shopassist`` entry point over a real Chroma index; the
two-process run is a real ``torchrun --standalone`` (gloo on CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.fusion_head import ArtifactError
from retrieval.manifest import IndexLayout, read_manifest
from retrieval.search import SearchEngine
from tests.training import ranker_fixtures
from tests.training.fusion_fixtures import tiny_config
from training.registry import ModelRegistry

trained_ranker = ranker_fixtures.trained_ranker  # a ranker trained on the simulated log

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, settings, **changes) -> Path:
    """A TOML file with the tiny models' ``[retrieval]`` settings and a tiny ``[train.fusion]``."""
    lines = ["[retrieval]", "profile = 'clip'", f"clip_model = '{settings.clip_model}'",
             f"text_model = '{settings.text_model}'", "device = 'cpu'", "precision = 'fp32'",
             "", "[train.fusion]"]
    for key, value in tiny_config(**changes).to_dict().items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def fusion_kind(settings) -> str:
    return read_manifest(IndexLayout(Path(settings.index_dir)).version_dir())["fusion"]["kind"]


@pytest.fixture(scope="module")
def models(small_index, tmp_path_factory):
    """One artifact trained through ``shopassist train fusion`` (module-scoped)."""
    folder = tmp_path_factory.mktemp("cli-models")
    config = write_config(folder / "shopassist.toml", small_index, epochs=8)
    code = main(["train", "fusion", "--config", str(config), "--index",
                 str(small_index.index_dir), "--out", str(folder / "models"),
                 "--cache", str(folder / "cache"), "--device", "cpu", "--json"])
    assert code == 0
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what came before (e.g. a fixture's training summary)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_torchrun_two_processes_train_one_artifact(small_index, tmp_path):
    config = write_config(tmp_path / "shopassist.toml", small_index, epochs=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "retrieval.cli", "train", "fusion", "--config", str(config), "--index",
           str(small_index.index_dir), "--out", str(tmp_path / "models"), "--cache",
           str(tmp_path / "cache"), "--device", "cpu", "--json"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])  # only the main process prints
    assert summary["version"] == "v0001" and summary["epochs"] == 2
    registry = ModelRegistry(tmp_path / "models")
    assert registry.versions("fusion") == ["v0001"]
    meta = json.loads((registry.path("fusion", "v0001") / "head.json").read_text())
    assert meta["training"]["processes"] == 2
    # Each process drew its half of every global batch: the step count is one process's.
    single = tiny_config(epochs=2)
    assert meta["training"]["steps"] == summary["steps"] > 0
    assert meta["config"]["batch_size"] == single.batch_size


def test_models_list_promote_search_and_rollback(models, small_index, capsys):
    registry = ModelRegistry(models / "models")
    where = ["--models", str(models / "models"), "--index", str(small_index.index_dir)]
    code, out, _ = run_cli(capsys, "models", "list", *where, "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["version"] == "v0001" and not entry["error"] and not entry["promoted_for"]
    assert entry["metrics"]["test"]["text_photo"]["NDCG@10"] >= 0.0

    before = SearchEngine.open(settings=small_index).search(text="red dresses", k=5).hits
    assert fusion_kind(small_index) == "weighted-concat"
    code, out, _ = run_cli(capsys, "--config", str(models / "shopassist.toml"), "models",
                           "promote", "fusion", "latest", *where)
    assert code == 0 and "v0001 now serves" in out
    assert fusion_kind(small_index) == "learned-head"
    assert registry.promoted("fusion", small_index) == "v0001"
    # Promoting it again re-fuses nothing and adds nothing to the rollback stack.
    serving = IndexLayout(Path(small_index.index_dir)).current()
    promotions = (models / "models" / "fusion" / "promotions.json").read_text()
    code, out, _ = run_cli(capsys, "--config", str(models / "shopassist.toml"), "models",
                           "promote", "fusion", "v0001", *where)
    assert code == 0 and "already serves" in out
    assert IndexLayout(Path(small_index.index_dir)).current() == serving
    assert (models / "models" / "fusion" / "promotions.json").read_text() == promotions
    engine = SearchEngine.open(settings=small_index)
    after = engine.search(text="red dresses", k=5).hits
    assert len(after) == len(before) == 5
    assert [h.score for h in after] != [h.score for h in before]
    code, out, _ = run_cli(capsys, "models", "list", *where, "--json")
    assert json.loads(out)[0]["promoted_for"] == [str(Path(small_index.index_dir).resolve())]

    code, out, _ = run_cli(capsys, "--config", str(models / "shopassist.toml"), "models",
                           "rollback", "fusion", *where)
    assert code == 0 and "training-free fusion" in out
    assert fusion_kind(small_index) == "weighted-concat"
    assert registry.promoted("fusion", small_index) is None
    code, _, err = run_cli(capsys, "--config", str(models / "shopassist.toml"), "models",
                           "rollback", "fusion", *where)
    assert code != 0 and "Nothing to roll back" in err


def test_rollback_uses_the_index_copy_of_a_deleted_head(models, small_index, tmp_path,
                                                        capsys):
    """The index keeps the head it was fused with, so rolling back to a head whose models
    folder copy was deleted still works while the index keeps that version."""
    settings = small_index.replace(index_dir=tmp_path / "index")
    shutil.copytree(small_index.index_dir, settings.index_dir)
    config = write_config(tmp_path / "shopassist.toml", small_index, epochs=1, seed=7)
    store = tmp_path / "models"
    shutil.copytree(models / "models" / "fusion" / "v0001", store / "fusion" / "v0001")
    assert main(["train", "fusion", "--config", str(config), "--index",
                 str(settings.index_dir), "--out", str(store), "--cache",
                 str(tmp_path / "cache"), "--device", "cpu"]) == 0
    registry = ModelRegistry(store)
    first = read_manifest(IndexLayout(Path(settings.index_dir)).version_dir())
    registry.promote("fusion", "v0001", settings)
    head_of_v0001 = read_manifest(IndexLayout(Path(settings.index_dir)).version_dir())["fusion"]
    registry.promote("fusion", "v0002", settings)
    shutil.rmtree(store / "fusion" / "v0001")
    where = ["--models", str(store), "--index", str(settings.index_dir)]
    code, out, err = run_cli(capsys, "--config", str(config), "models", "rollback", "fusion",
                             *where)
    assert code == 0 and "v0001" in out, err
    serving = read_manifest(IndexLayout(Path(settings.index_dir)).version_dir())["fusion"]
    assert serving["version"] == head_of_v0001["version"] != first["fusion"].get("version")
    assert registry.promoted("fusion", settings) == "v0001"
    assert SearchEngine.open(settings=settings).search(text="red dresses", k=3).hits

    # Once the index no longer keeps a version fused with it: a clear error, no change.
    registry.promote("fusion", "v0002", settings)
    layout = IndexLayout(Path(settings.index_dir))
    for name in layout.versions()[:-1]:  # what a rebuild's pruning would leave
        shutil.rmtree(layout.versions_dir / name)
    serving = layout.current()
    code, _, err = run_cli(capsys, "--config", str(config), "models", "rollback", "fusion",
                           *where)
    assert code == 2 and "Cannot roll back to fusion head v0001" in err and "promote" in err
    assert layout.current() == serving and registry.promoted("fusion", settings) == "v0002"


def test_eval_writes_a_report_with_plots(models, small_index, capsys, tmp_path):
    out_dir = tmp_path / "report"
    code, out, _ = run_cli(capsys, "--config", str(models / "shopassist.toml"), "eval",
                           "--models", str(models / "models"), "--index",
                           str(small_index.index_dir), "--cache", str(models / "cache"),
                           "--report", str(out_dir), "--json")
    assert code == 0
    systems = json.loads(out)
    names = list(systems)
    assert names[0] == "untrained fusion" and any(n.startswith("trained fusion") for n in names)
    trained = next(v for n, v in systems.items() if n.startswith("trained fusion"))
    assert trained["text_photo"]["NDCG@10"] > systems["untrained fusion"]["text_photo"][
        "NDCG@10"]
    report = (out_dir / "report.md").read_text()
    assert "NDCG@10" in report and "R@1" in report
    misses = systems["untrained fusion"]["photo_misses"]
    photo = systems["untrained fusion"]["photo"]
    assert misses["n"] == photo["n"]
    assert misses["misses"] == round(photo["n"] * (1 - photo["R@1"]))
    if misses["misses"]:
        assert "the misses" in report and f"{int(misses['misses'])} of" in report
    assert "What the head reads" in report and "| colour | 3 |" in report
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert pngs, "the report has plots"
    for png in out_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png.name})" in report  # linked from the Markdown


def test_a_corrupted_artifact_is_refused_and_the_index_keeps_serving(models, small_index,
                                                                     capsys, tmp_path):
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(models / "models", copy)
    weights = copy / "fusion" / "v0001" / "head.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    where = ["--models", str(copy), "--index", str(small_index.index_dir)]
    code, out, _ = run_cli(capsys, "models", "list", *where)
    assert code == 0 and "CORRUPT" in out
    serving = IndexLayout(Path(small_index.index_dir)).current()
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        ModelRegistry(copy).promote("fusion", "v0001", small_index, show=False)
    assert IndexLayout(Path(small_index.index_dir)).current() == serving
    hits = SearchEngine.open(settings=small_index).search(text="blue jeans", k=3).hits
    assert len(hits) == 3 and all(np.isfinite(h.score) for h in hits)


def test_eval_adds_a_ranker_column(models, small_index, trained_ranker, capsys, tmp_path):
    import shutil

    result, _ = trained_ranker
    folder = tmp_path / "models"
    shutil.copytree(models / "models", folder)
    shutil.copytree(result.artifact, folder / "ranker" / "v0001")
    code, out, _ = run_cli(capsys, "--config", str(models / "shopassist.toml"), "eval",
                           "--models", str(folder), "--index", str(small_index.index_dir),
                           "--cache", str(models / "cache"), "--report",
                           str(tmp_path / "report"), "--ranker", "v0001", "--json")
    assert code == 0
    systems = json.loads(out)
    [name] = [n for n in systems if n.endswith("+ ranker v0001")]
    trained = systems[name.split(" + ")[0]]
    for kind in ("text_photo", "text_product", "photo"):
        figures = systems[name][kind]
        assert figures["n"] == trained[kind]["n"]
        assert 0.0 <= figures["NDCG@10"] <= 1.0
    # The ranker re-orders the trained head's top 100, so its figures differ.
    assert systems[name] != trained
    report = (tmp_path / "report" / "report.md").read_text()
    assert name in report and "--ranker VERSION" not in report
    code, _, err = run_cli(capsys, "--config", str(models / "shopassist.toml"), "eval",
                           "--models", str(folder), "--index", str(small_index.index_dir),
                           "--cache", str(models / "cache"), "--ranker", "promoted")
    assert code != 0 and "No ranker is promoted" in err
