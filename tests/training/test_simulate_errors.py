"""Mistakes with ``shopassist simulate`` (and the logs and truth files it writes) are refused
with a one-line message, and never cost the log or truth already there."""

from __future__ import annotations

import json
import re

import pytest

from assistant.eventlog import EventLog
from training.datasets import impressions_table
from training.fusion_report import evaluate_session_log
from training.session_eval import evaluate_sessions
from training.truth import SimulationTruth

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_truth_files_of_other_shapes_name_the_file(tmp_path):
    for text in ("[]", "3", '"truth"', "{", '{"format": 1, "seed": 0}'):
        path = tmp_path / "t.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            SimulationTruth.load(path)
    with pytest.raises(FileNotFoundError, match="No ground truth"):
        SimulationTruth.load(tmp_path / "none.json")
    assert json.loads(path.read_text()) == {"format": 1, "seed": 0}
