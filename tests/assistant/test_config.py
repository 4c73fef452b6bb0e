"""Assistant settings: defaults, the [assistant] TOML table, SHOPASSIST_* variables, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import AssistantSettings, load_assistant_settings


def test_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./shopassist.toml here
    settings = load_assistant_settings(environ={})
    assert settings == AssistantSettings()
    assert settings.log_db == "sqlite:///data/events.sqlite"


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "shopassist.toml"
    config.write_text('[retrieval]\nprofile = "clip"\n\n'
                      '[assistant]\nlog_db = "sqlite:///from-file.sqlite"\n')
    assert load_assistant_settings(config, environ={}).log_db == "sqlite:///from-file.sqlite"
    env = {"SHOPASSIST_CONFIG": str(config),
           "SHOPASSIST_LOG_DB": "postgresql+psycopg://shop@db/events"}
    assert load_assistant_settings(environ=env).log_db == "postgresql+psycopg://shop@db/events"
    assert load_assistant_settings(environ=env, log_db="sqlite://").log_db == "sqlite://"
    assert load_assistant_settings(environ=env, log_db=None).log_db.startswith("postgresql")


@pytest.mark.parametrize("body, message", [
    ('[assistant]\nlog_dbb = "x"\n', "Unknown setting 'log_dbb'"),
    ("[assistant]\nlog_db = 3\n", "not a valid str"),
    ('assistant = "x"\n', "must be a table"),
    ("[assistant\n", "not valid TOML"),
])
def test_bad_files(tmp_path: Path, body: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_assistant_settings(config, environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_assistant_settings(environ={"SHOPASSIST_CONFIG": str(tmp_path / "nope.toml")})
