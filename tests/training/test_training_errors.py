"""Mistakes a user can make with training and the model registry, through the real
``shopassist`` entry point where it matters: each is a one-line error (exit 2) that says
what to do, and nothing is registered, promoted or deleted by a refused command."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from assistant.eventlog import EventLog
from retrieval.cli import main
from retrieval.fusion_head import ArtifactError
from retrieval.ranker import RANKER_FILE, load_ranker, save_ranker, serving_ranker_dir
from tests.training import ranker_fixtures
from tests.training.ranker_fixtures import tiny_ranker_config
from tests.training.test_fusion_commands import ROOT
from training.commands import _resume_hint
from training.datasets import build_dataset, write_dataset
from training.fusion_checkpoint import CheckpointError
from training.fusion_config import FusionConfig, load_fusion_config
from training.fusion_encode import IndexView
from training.loop import TrainingDiverged
from training.ranker import train_ranker
from training.ranker_config import RankerConfig, load_ranker_config
from training.ranker_data import build_ranker_data, load_impressions
from training.registry import ModelRegistry

pytestmark = pytest.mark.usefixtures("one_torch_thread")
trained_ranker = ranker_fixtures.trained_ranker
index_copy = ranker_fixtures.index_copy


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def frame(simulated):
    url, _ = simulated
    return load_impressions(url, tiny_ranker_config())


@pytest.fixture(scope="module")
def data(sim_engine, frame):
    rows, snapshot = frame
    return build_ranker_data(rows, IndexView.open(sim_engine.settings.index_dir),
                             tiny_ranker_config(), snapshot)


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[train.ranker]\nlr = nan\n", "lr must be a finite number"),
    ("[train.ranker]\nlambda_click = inf\n", "lambda_click must be a finite number"),
    ("[train.ranker]\nhidden = 0\n", "hidden = 0"),
    ("[train.ranker]\ntower = 0\n", "tower = 0"),
    ("[train.ranker]\nembed_dim = 0\n", "embed_dim = 0"),
    ("[train.ranker]\nmax_weight = nan\n", "max_weight must be a finite number"),
    ("[train.ranker]\nlr = 0.0\n", "lr and max_minutes must be positive"),
    ("[train.ranker]\nlamda_click = 1.0\n", "Unknown setting 'lamda_click'"),
    ("[train.fusoin]\nepochs = 1\n", r"Unknown table \[train.fusoin\].*did you mean "
                                     r"\[train.fusion\]"),
    ("train = 3\n", "train must be tables"),
])
def test_bad_ranker_config_is_refused_before_any_work(text, message, tmp_path, capsys):
    config = tmp_path / "shopassist.toml"
    config.write_text(text)
    out = tmp_path / "models"
    code, _, err = run_cli(capsys, "train", "ranker", "--config", str(config), "--index",
                           str(tmp_path / "no-index"), "--log", "sqlite:///nowhere.sqlite",
                           "--out", str(out), "--device", "cpu")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_fusion_config_refuses_non_finite_and_degenerate_values(tmp_path):
    for bad in ({"lr": math.inf}, {"w_photo": math.nan}, {"base_shares": (0.0, math.nan)},
                {"hidden": 0}, {"dim": 0}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            FusionConfig(**bad)
    path = tmp_path / "shopassist.toml"
    path.write_text("[train.fusion]\nw_match = -inf\n")
    with pytest.raises(ValueError, match="w_match must be a finite number"):
        load_fusion_config(path, environ={})
    with pytest.raises(ValueError, match="lr must be a finite number"):
        load_ranker_config(None, environ={"SHOPASSIST_RANKER_LR": "nan"})
    assert RankerConfig() and FusionConfig()  # the defaults stay valid


# -- divergence and non-finite artifacts -----------------------------------------------------

def test_a_diverging_run_stops_and_registers_nothing(sim_engine, data, tmp_path):
    out = tmp_path / "models"
    with pytest.raises(TrainingDiverged,
                       match=r"epoch \d+, step \d+.*Lower lr.*\[train\.ranker\]"):
        train_ranker(sim_engine.settings.index_dir, tiny_ranker_config(lr=1e9, epochs=3),
                     out, data=data, device="cpu", show=False)
    assert ModelRegistry(out).versions("ranker") == []


ONE_RANK_DIVERGES = """
import torch
from accelerate import Accelerator
from training.loop import TrainingDiverged, finish_step

accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
state = {"step": 0}
for step in range(3):
    loss = model(torch.ones(4, 3)).pow(2).mean()
    if step == 1 and accelerator.process_index == 1:
        loss = loss * float("nan")
    try:
        finish_step(accelerator, loss, {}, optimizer, scheduler, state, epoch=0,
                    main=accelerator.is_main_process, history={"steps": []}, sums={},
                    bar=None if not accelerator.is_main_process else type(
                        "Bar", (), {"update": lambda self, n: None})())
    except TrainingDiverged as exc:
        with open(f"rank{accelerator.process_index}.txt", "w") as out:  # the cwd
            out.write(f"stopped at step {state['step']}: {exc}")
        break
"""


def test_a_loss_diverging_in_one_process_stops_every_process(tmp_path):
    """Under torchrun a NaN in one process's loss stops all of them at the same step;
    raising in that process alone left the other waiting in the gradient all-reduce."""
    import os
    import subprocess
    import sys

    script = tmp_path / "diverge.py"
    script.write_text(ONE_RANK_DIVERGES)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    stopped = [tmp_path / f"rank{rank}.txt" for rank in (0, 1)]
    assert all(path.is_file() for path in stopped), done.stderr[-3000:]
    first, second = (path.read_text() for path in stopped)
    assert first.startswith("stopped at step 1: The training loss became non-finite in "
                            "another process")
    assert second.startswith("stopped at step 1: The training loss became nan")


def test_an_artifact_with_non_finite_weights_is_not_promoted(trained_ranker, index_copy,
                                                             tmp_path, capsys):
    result, _ = trained_ranker
    models = tmp_path / "models"
    model, meta, co = load_ranker(result.artifact)
    with torch.no_grad():
        model.towers["click"][-1].bias.fill_(math.nan)
    meta = {k: v for k, v in meta.items()
            if k not in ("format", "kind", "architecture", "sha256", "cointeraction")}
    save_ranker(model, models / "ranker" / "v0001", extra=meta, cointeraction=co)
    with pytest.raises(ArtifactError, match="non-finite weights"):
        load_ranker(models / "ranker" / "v0001")
    code, _, err = run_cli(capsys, "models", "promote", "ranker", "v0001", "--models",
                           str(models), "--index", str(index_copy.index_dir))
    assert code == 2 and "non-finite weights" in err and "v0001" in err
    assert serving_ranker_dir(index_copy.index_dir) is None
    assert ModelRegistry(models).promoted("ranker", index_copy) is None


def test_dataset_refuses_a_nan_max_weight(simulated, tmp_path, capsys):
    url, _ = simulated
    with EventLog.open(url, create=False) as log, \
            pytest.raises(ValueError, match="finite number of at least 1"):
        build_dataset(log, max_weight=math.nan)
    out = tmp_path / "ds"
    code, _, err = run_cli(capsys, "dataset", "--db", url, "--out", str(out), "--max-weight",
                           "nan")
    assert code == 2 and "--max-weight" in err and not out.exists()


# -- rows of another index, resume of another run -------------------------------------------

def test_rows_mostly_of_another_catalog_are_refused(sim_engine, frame, caplog):
    rows, snapshot = frame
    view = IndexView.open(sim_engine.settings.index_dir)
    foreign = rows.copy()
    n = int(len(foreign) * 0.6)
    foreign.loc[foreign.index[:n], "product_id"] = "not-in-this-catalog"
    with pytest.raises(ValueError, match=f"{n:,} of the {len(rows):,}.*another catalog"):
        build_ranker_data(foreign, view, tiny_ranker_config(), snapshot)
    some = rows.copy()
    some.loc[some.index[:5], "product_id"] = "gone"
    with caplog.at_level("WARNING", logger="training.ranker_data"):
        kept = build_ranker_data(some, view, tiny_ranker_config(), snapshot)
    assert kept.info["dropped_unknown_products"] == 5
    assert any("5 of" in r.getMessage() for r in caplog.records)


def test_resume_refuses_a_checkpoint_of_another_index(sim_engine, frame, data, index_copy,
                                                      tmp_path):
    config = tiny_ranker_config(epochs=3)
    out = tmp_path / "models"
    train_ranker(sim_engine.settings.index_dir, config, out, data=data, device="cpu",
                 show=False, stop_after=1)
    rows, snapshot = frame
    other = build_ranker_data(rows, IndexView.open(index_copy.index_dir), config, snapshot)
    with pytest.raises(CheckpointError, match="another index"):
        train_ranker(index_copy.index_dir, config, out, data=other, device="cpu", show=False,
                     resume=True)
    assert ModelRegistry(out).versions("ranker") == []
    # A checkpoint from before runs recorded their index cannot be checked: refused too.
    state = ModelRegistry(out).checkpoint_dir("ranker") / "state.json"
    meta = json.loads(state.read_text())
    del meta["trained_on"]
    state.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not record which index"):
        train_ranker(sim_engine.settings.index_dir, config, out, data=data, device="cpu",
                     show=False, resume=True)


# -- the registry ----------------------------------------------------------------------------

def test_rollback_uses_the_index_copy_of_a_deleted_artifact(trained_ranker, index_copy,
                                                            tmp_path, capsys):
    result, _ = trained_ranker
    models = tmp_path / "models"
    for version in ("v0001", "v0002"):
        shutil.copytree(result.artifact, models / "ranker" / version)
    registry = ModelRegistry(models)
    registry.promote("ranker", "v0001", index_copy)
    registry.promote("ranker", "v0002", index_copy)
    shutil.rmtree(models / "ranker" / "v0001")
    where = ["--models", str(models), "--index", str(index_copy.index_dir)]
    code, out, err = run_cli(capsys, "models", "rollback", "ranker", *where)
    assert code == 0, err
    assert "back on v0001" in out
    assert (index_copy.index_dir / RANKER_FILE).read_text().strip() == "v0001"
    assert registry.promoted("ranker", index_copy) == "v0001"

    # Neither copy left: a clear error, and the index keeps serving what it served.
    registry.promote("ranker", "v0002", index_copy)
    shutil.rmtree(index_copy.index_dir / "rankers" / "v0001")
    code, _, err = run_cli(capsys, "models", "rollback", "ranker", *where)
    assert code == 2 and "Cannot roll back to ranker v0001" in err and "promote" in err
    assert (index_copy.index_dir / RANKER_FILE).read_text().strip() == "v0002"
    assert registry.promoted("ranker", index_copy) == "v0002"


def test_promoting_the_serving_ranker_again_changes_nothing(trained_ranker, index_copy,
                                                           capsys):
    result, models = trained_ranker
    where = ["--models", str(models), "--index", str(index_copy.index_dir)]
    code, out, _ = run_cli(capsys, "models", "promote", "ranker", result.version, *where)
    assert code == 0 and "now serves" in out
    promotions = models / "ranker" / "promotions.json"
    before = promotions.read_text()
    code, out, _ = run_cli(capsys, "models", "promote", "ranker", result.version, *where)
    assert code == 0 and "already serves" in out
    assert promotions.read_text() == before  # no duplicate on the rollback stack
    ModelRegistry(models).rollback("ranker", index_copy)


# -- datasets and folders --------------------------------------------------------------------

def test_a_folder_without_dataset_json_is_not_a_dataset(sim_engine, simulated, tmp_path,
                                                        capsys):
    url, _ = simulated
    with EventLog.open(url, create=False) as log:
        dataset = build_dataset(log)
    folder = tmp_path / "ds"
    files = write_dataset(dataset, folder, sim_engine.products)
    assert files["catalog_pairs"].is_file()
    write_dataset(dataset, folder)  # reused without an index: no stale catalog pairs
    assert not (folder / "catalog_pairs.parquet").exists()
    assert "catalog_pairs" not in json.loads((folder / "dataset.json").read_text())["files"]

    good = (folder / "impressions.parquet").read_bytes()
    (folder / "impressions.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"impressions\.parquet is not a readable Parquet"):
        load_impressions(str(folder), tiny_ranker_config())
    (folder / "impressions.parquet").write_bytes(good)
    (folder / "dataset.json").unlink()
    out = tmp_path / "models"
    code, _, err = run_cli(capsys, "train", "ranker", "--index",
                           str(sim_engine.settings.index_dir), "--dataset", str(folder),
                           "--out", str(out), "--device", "cpu")
    assert code == 2 and "dataset.json is missing" in err and "shopassist dataset" in err
    assert not (out / "ranker").exists()


@pytest.mark.parametrize("argv", [
    ("train", "ranker", "--out", "{file}", "--log", "sqlite:///x.sqlite"),
    ("train", "fusion", "--out", "{file}"),
    ("train", "fusion", "--cache", "{file}"),
    ("models", "list", "--models", "{file}"),
    ("eval", "--report", "{file}", "--version", "none"),
])
def test_a_file_where_a_folder_is_expected_fails_at_once(argv, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("keep me\n")
    code, _, err = run_cli(capsys, *(a.format(file=file) for a in argv),
                           "--index", str(tmp_path / "no-index"))
    assert code == 2 and "is not a folder" in err, err
    assert file.read_text() == "keep me\n"


@pytest.mark.parametrize("argv, table", [(("train", "ranker"), "[train.ranker]"),
                                         (("train", "fusion"), "[train.fusion]"),
                                         (("models", "promote"), "[retrieval]"),
                                         (("eval",), "[retrieval]")])
def test_config_help_names_the_table_read(argv, table, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    config_help = text[text.index("--config CONFIG TOML"):][:90]
    assert table in config_help, config_help


def test_ctrl_c_says_how_to_resume(tmp_path, capsys):
    checkpoint = tmp_path / "ranker" / "checkpoint"
    with pytest.raises(KeyboardInterrupt), _resume_hint(tmp_path, "ranker"):
        raise KeyboardInterrupt
    assert "--resume" not in capsys.readouterr().err  # no checkpoint yet: nothing to resume
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text(json.dumps({"finished": False}))
    with pytest.raises(KeyboardInterrupt), _resume_hint(tmp_path, "ranker"):
        raise KeyboardInterrupt
    assert "shopassist train ranker --resume" in capsys.readouterr().err

