"""Mistakes with ``shopassist simulate`` (and the logs and truth files it writes) are refused
with a one-line message, and never cost the log or truth already there."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from assistant.eventlog import EventLog
from assistant.eventlog.schema import queries
from retrieval.cli import main
from training import simulate as simulate_module
from training.datasets import impressions_table
from training.fusion_report import evaluate_session_log
from training.session_eval import evaluate_sessions
from training.simulate import simulate
from training.truth import SimulationTruth

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def simulate_cli(index: Path, db: Path, *args: str) -> int:
    return main(["simulate", "--index", str(index), "--db", f"sqlite:///{db}",
                 "--device", "cpu", *args])


def error_of(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def state(db: Path) -> tuple[dict[str, int], bytes]:
    """The log's row counts and its truth file's bytes."""
    with EventLog.open(f"sqlite:///{db}", create=False) as log:
        counts = log.counts()
    return counts, db.with_name(db.stem + ".truth.json").read_bytes()


def logged_queries(db: Path) -> set[str]:
    with EventLog.open(f"sqlite:///{db}", create=False) as log, log.reading() as conn:
        return set(conn.execute(select(queries.c.id)).scalars())


@pytest.mark.parametrize(("args", "message"), [
    (["--sessions", "0"], "--sessions must be at least 1 (got 0)"),
    (["--sessions", "3", "--shoppers", "-1"], "--shoppers must be at least 1 (got -1)"),
    (["--sessions", "3", "--shoppers", "0"], "--shoppers must be at least 1 (got 0)"),
    (["--sessions", "3", "--seed", "-2"], "--seed must be at least 0 (got -2)"),
    (["--sessions", "3", "--eta", "-0.5"], "--eta must be at least 0 and finite"),
    (["--sessions", "3", "--eta", "nan"], "--eta must be at least 0 and finite (got nan)"),
    (["--sessions", "3", "--explore", "1.5"], "--explore must be between 0 and 1 (got 1.5)"),
    (["--sessions", "3", "--explore-depth", "0"],
     "--explore-depth must be between 10 and 1000 (got 0)"),
])
def test_numbers_out_of_range_are_refused_before_any_work(tmp_path, capsys, args, message):
    db = tmp_path / "events.sqlite"
    assert simulate_cli(tmp_path / "no-index", db, *args) == 2
    assert message in error_of(capsys)
    assert not db.exists()


def test_a_truth_path_that_cannot_be_written_is_refused_before_simulating(tmp_path, capsys):
    db = tmp_path / "events.sqlite"
    (tmp_path / "folder").mkdir()
    assert simulate_cli(tmp_path / "no-index", db, "--sessions", "3",
                        "--truth", str(tmp_path / "folder")) == 2
    assert "is a folder: pass --truth with the JSON file" in error_of(capsys)
    (tmp_path / "afile").write_text("x")
    assert simulate_cli(tmp_path / "no-index", db, "--sessions", "3",
                        "--truth", str(tmp_path / "afile" / "t.json")) == 2
    assert "afile is a file, not a folder" in error_of(capsys)
    assert not db.exists() and (tmp_path / "afile").read_text() == "x"


def test_a_photos_folder_given_must_exist(tmp_path, capsys):
    db = tmp_path / "events.sqlite"
    assert simulate_cli(tmp_path / "no-index", db, "--sessions", "3",
                        "--photos", str(tmp_path / "nowhere")) == 2
    assert "--photos" in error_of(capsys) and not db.exists()


def test_a_simulated_log_takes_another_run_only_with_append(sim_engine, tmp_path, capsys):
    """Its truth file is never written over: a second run is refused, or, with --append,
    added to it; a run that cannot join it (same seed, other settings) writes nothing."""
    index, db = sim_engine.settings.index_dir, tmp_path / "events.sqlite"
    truth_path = tmp_path / "events.truth.json"
    assert simulate_cli(index, db, "--sessions", "4", "--seed", "1") == 0
    first = SimulationTruth.load(truth_path)
    before = state(db)
    capsys.readouterr()
    refusals = [
        (["--seed", "2"], "already holds simulated sessions (e.g. sim1s"),
        (["--seed", "1", "--append"], "already holds the sessions of seed 1"),
        (["--seed", "2", "--append", "--eta", "0.5"], "eta: 1.0 in the earlier runs, 0.5 now"),
    ]
    for args, message in refusals:
        assert simulate_cli(index, db, "--sessions", "3", *args) == 2, args
        assert message in error_of(capsys)
        assert state(db) == before, args
    # A new log with the old truth file would lose it too.
    other = tmp_path / "other.sqlite"
    assert simulate_cli(index, other, "--sessions", "3", "--seed", "2",
                        "--truth", str(truth_path)) == 2
    assert "already holds the ground truth" in error_of(capsys)
    assert state(db) == before

    assert simulate_cli(index, db, "--sessions", "3", "--seed", "2", "--append") == 0
    assert "2 runs" in capsys.readouterr().out
    both = SimulationTruth.load(truth_path)
    second = {s.shopper_id for s in both.shoppers} - {s.shopper_id for s in first.shoppers}
    assert both.seeds == [1, 2] and both.sessions == 7 and second
    assert all(both.queries[q] == v for q, v in first.queries.items())
    assert logged_queries(db) <= set(both.queries)
    assert {q for q in both.queries if q.startswith("sim2")}
    assert both.summary["queries"] == sum(r["summary"]["queries"] for r in both.runs)


def test_a_broken_truth_file_is_named_and_kept(sim_engine, tmp_path, capsys):
    index, db = sim_engine.settings.index_dir, tmp_path / "events.sqlite"
    truth_path = tmp_path / "events.truth.json"
    for text, message in [("[]", "holds a JSON list, not a simulation's truth"),
                          ('{"format": 1,', "is not valid JSON"),
                          ('{"format": 1}', "is not a complete simulation truth")]:
        truth_path.write_text(text)
        assert simulate_cli(index, db, "--sessions", "3", "--append") == 2
        err = error_of(capsys)
        assert str(truth_path) in err and message in err
        assert truth_path.read_text() == text
    assert not logged_queries(db)


class InterruptedLog(EventLog):
    """An event log whose writer is interrupted (Ctrl-C) at its ``stop``-th query; ``killed``
    is the truth file as a run killed outright at that moment would have left it."""

    stop: int
    truth_path: Path
    seen: int = 0
    killed: str = ""

    def log_query(self, **kw: Any) -> str:
        self.seen += 1
        if self.seen == self.stop:
            self.killed = self.truth_path.read_text()
            raise KeyboardInterrupt
        return super().log_query(**kw)


def test_a_run_that_saves_as_it_goes_still_counts_every_session(sim_engine, tmp_path,
                                                                monkeypatch):
    class Clock:  # 20 s per reading: saves after the second of three waves, not the last
        readings = 0

        @classmethod
        def perf_counter(cls) -> float:
            cls.readings += 1
            return cls.readings * 20.0

    monkeypatch.setattr(simulate_module, "WAVE", 2)
    monkeypatch.setattr(simulate_module, "time", Clock)
    truth_path = tmp_path / "events.truth.json"
    with EventLog.open(f"sqlite:///{tmp_path / 'events.sqlite'}") as log:
        truth = simulate(sim_engine, log, 5, seed=2, truth_path=truth_path,
                         show_progress=False)
    saved = SimulationTruth.load(truth_path)
    for done in (truth, saved):
        assert done.sessions == 5 and done.summary["sessions"] == 5
        assert "interrupted" not in done.summary


def test_an_interrupted_run_leaves_a_truth_of_every_logged_query(sim_engine, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(simulate_module, "WAVE", 2)
    monkeypatch.setattr(simulate_module, "SAVE_EVERY_S", 0.0)  # after every wave
    db = tmp_path / "events.sqlite"
    truth_path = tmp_path / "events.truth.json"
    log = InterruptedLog.open(f"sqlite:///{db}")
    log.stop, log.truth_path = 20, truth_path
    with log, pytest.raises(KeyboardInterrupt):
        simulate(sim_engine, log, 40, seed=4, truth_path=truth_path, show_progress=False)
    truth = SimulationTruth.load(truth_path)
    logged = logged_queries(db)
    assert len(logged) == 19 and logged <= set(truth.queries)
    assert truth.summary["interrupted"] and truth.summary["queries"] == 19
    # Killed outright, the run would have left the truth of its last finished wave.
    killed = SimulationTruth.from_dict(json.loads(log.killed))
    assert killed.summary["interrupted"] and 0 < len(killed.queries) < 19
    assert set(killed.queries) <= logged
    # The run goes on in the same log and truth under another seed.
    with EventLog.open(f"sqlite:///{db}") as log:
        simulate(sim_engine, log, 3, seed=5, truth_path=truth_path, append=True,
                 show_progress=False)
    both = SimulationTruth.load(truth_path)
    assert both.seeds == [4, 5] and logged_queries(db) <= set(both.queries)
    assert both.summary["interrupted"]  # one of its runs stopped short


def test_a_log_without_search_sessions_is_refused_with_what_to_do(sim_engine, simulated,
                                                                 tmp_path):
    url = f"sqlite:///{tmp_path / 'purged.sqlite'}"
    EventLog.open(url).close()
    truth_path = simulated[1].save(tmp_path / "purged.truth.json")
    with pytest.raises(ValueError, match=r"holds no search sessions.*shopassist simulate"):
        evaluate_session_log(sim_engine.settings.index_dir, None, sim_engine.settings, url,
                             truth_path)
    with EventLog.open(url, create=False) as log:
        frame = impressions_table(log)
    with pytest.raises(ValueError, match="no search sessions"):
        evaluate_sessions(sim_engine, {"free": sim_engine}, frame, simulated[1])


def test_dataset_refuses_a_file_as_its_output_folder(tmp_path, capsys):
    db = tmp_path / "events.sqlite"
    EventLog.open(f"sqlite:///{db}").close()
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    assert main(["dataset", "--db", f"sqlite:///{db}", "--out", str(out)]) == 2
    assert "--out" in error_of(capsys) and out.read_text() == "keep me"


def test_truth_files_of_other_shapes_name_the_file(tmp_path):
    for text in ("[]", "3", '"truth"', "{", '{"format": 1, "seed": 0}'):
        path = tmp_path / "t.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            SimulationTruth.load(path)
    with pytest.raises(FileNotFoundError, match="No ground truth"):
        SimulationTruth.load(tmp_path / "none.json")
    assert json.loads(path.read_text()) == {"format": 1, "seed": 0}


def test_a_plain_sqlite_path_works_for_simulate_dataset_and_training(sim_engine, tmp_path,
                                                                     capsys):
    """``--db events.sqlite`` as the app's commands take it: the truth lands beside it, and
    the training readers tell the log (a file) from a dataset folder."""
    from training.fusion_data import logged_source
    from training.ranker_data import load_impressions

    from .ranker_fixtures import tiny_ranker_config

    db = tmp_path / "events.sqlite"
    assert main(["simulate", "--index", str(sim_engine.settings.index_dir), "--db", str(db),
                 "--device", "cpu", "--sessions", "3"]) == 0
    truth = SimulationTruth.load(tmp_path / "events.truth.json")
    assert logged_queries(db) <= set(truth.queries)
    assert main(["dataset", "--db", str(db), "--out", str(tmp_path / "ds")]) == 0
    config = tiny_ranker_config()
    from_log, snapshot = load_impressions(str(db), config)
    from_folder, same = load_impressions(str(tmp_path / "ds"), config)
    assert snapshot == same and len(from_log) == len(from_folder) > 0
    assert logged_source(str(db))[1] == snapshot
    with pytest.raises(FileNotFoundError, match="No dataset folder or event log at"):
        load_impressions(str(tmp_path / "nowhere"), config)


def test_eval_sessions_names_a_bad_truth_or_log_before_the_catalog_work(
        sim_engine, simulated, tmp_path, capsys, monkeypatch):
    import training.fusion_report

    def catalog_evaluation(*args, **kwargs):
        raise AssertionError("the catalog evaluation ran before the log was checked")

    monkeypatch.setattr(training.fusion_report, "evaluate_artifact", catalog_evaluation)
    db = Path(simulated[0].removeprefix("sqlite:///"))
    truth = tmp_path / "broken.truth.json"
    truth.write_text('{"format": 1,')
    argv = ["eval", "--index", str(sim_engine.settings.index_dir), "--version", "none",
            "--models", str(tmp_path / "models"), "--report", str(tmp_path / "report")]
    assert main([*argv, "--sessions", str(db), "--truth", str(truth)]) == 2
    err = error_of(capsys)
    assert str(truth) in err and "is not valid JSON" in err
    not_a_log = tmp_path / "notes.sqlite"
    not_a_log.write_text("shopping list")
    good = simulated[1].save(tmp_path / "good.truth.json")
    assert main([*argv, "--sessions", str(not_a_log), "--truth", str(good)]) == 2
    assert "is not a SQLite database" in error_of(capsys)
    assert not_a_log.read_text() == "shopping list"
