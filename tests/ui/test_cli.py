"""``shopassist serve``, ``demo`` and ``users hash-password``."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from retrieval.cli import main
from tests.conftest import write_catalog
from ui import cli as ui_cli
from ui.passwords import verify_password


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


class FakeChild:
    """Stands in for the Streamlit process (records how it was started)."""

    started: ClassVar[list[tuple[list[str], dict[str, str]]]] = []

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        FakeChild.started.append((command, env))

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def poll(self) -> int:
        return 0


@pytest.fixture
def fake_child(monkeypatch) -> list[tuple[list[str], dict[str, str]]]:
    FakeChild.started = []
    monkeypatch.setattr(ui_cli.subprocess, "Popen", FakeChild)
    return FakeChild.started


def test_hash_password_from_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long passphrase\n"))
    assert main(["users", "hash-password", "--stdin"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert verify_password("a long passphrase", hashed)


def test_hash_password_prompts_twice_without_echo(monkeypatch, capsys):
    answers = iter(["first passphrase", "other passphrase"])
    monkeypatch.setattr(ui_cli.getpass, "getpass", lambda prompt: next(answers))
    assert main(["users", "hash-password"]) == 2
    assert "differ" in capsys.readouterr().err


def test_serve_runs_streamlit_with_the_settings(cli_env, fake_child, capsys, tmp_path):
    from retrieval.config import load_settings
    from retrieval.ingest import ingest  # a real (tiny) index: serve checks it exists

    ingest(write_catalog(tmp_path / "cat", n=8), settings=load_settings(None), progress=False)
    assert main(["serve", "--index", "index", "--port", "8765", "--llm", "rules"]) == 0
    assert "http://127.0.0.1:8765" in capsys.readouterr().out
    (command, env), = fake_child
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("ui/app.py")
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8765"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert env["SHOPASSIST_INDEX_DIR"] == str((tmp_path / "index").resolve())
    assert env["SHOPASSIST_LLM"] == "rules"


def test_serve_without_an_index_says_how_to_build_one(cli_env, fake_child, capsys):
    assert main(["serve", "--index", "nowhere"]) == 2
    assert "shopassist ingest" in capsys.readouterr().err and not fake_child


def test_serve_refuses_a_taken_port_and_a_bad_llm_before_starting(cli_env, fake_child,
                                                                  capsys, tmp_path,
                                                                  monkeypatch):
    from retrieval.config import load_settings
    from retrieval.ingest import ingest

    ingest(write_catalog(tmp_path / "cat", n=8), settings=load_settings(None), progress=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--index", "index", "--port", port]) == 2
        err = capsys.readouterr().err
        assert f"Cannot listen on 127.0.0.1:{port}" in err and "--port N" in err
        catalog = write_catalog(tmp_path / "cat2", n=4)
        assert main(["demo", "--catalog", str(catalog), "--port", port]) == 2
        assert "Cannot listen" in capsys.readouterr().err
    assert main(["serve", "--index", "index", "--llm", "bogus:xyz"]) == 2
    assert "Unknown LLM spec 'bogus:xyz'" in capsys.readouterr().err
    (tmp_path / "shop.toml").write_text("[assistant]\nexplore = 2\n")
    monkeypatch.setenv("SHOPASSIST_CONFIG", "shop.toml")
    assert main(["serve", "--index", "index"]) == 2
    assert "explore" in capsys.readouterr().err
    assert not fake_child  # nothing started, and the demo indexed nothing
    assert not (tmp_path / "index" / "versions" / "v0002").exists()


def test_demo_without_the_shared_catalog_says_how_to_use_any(cli_env, fake_child, capsys):
    assert main(["demo", "--catalog", "missing.csv"]) == 2
    err = capsys.readouterr().err
    assert "--catalog" in err and "README" in err and not fake_child


def test_demo_indexes_then_serves_or_prints_samples(cli_env, fake_child, capsys,
                                                    tmp_path: Path):
    catalog = write_catalog(tmp_path / "cat", n=12)
    assert main(["demo", "--catalog", str(catalog), "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "Indexing" in out and "$ shopassist search --text" in out and not fake_child
    assert main(["demo", "--catalog", str(catalog), "--port", "8766"]) == 0
    (command, env), = fake_child
    assert "8766" in command
    assert Path(env["SHOPASSIST_INDEX_DIR"]) == (tmp_path / "index").resolve()


def test_the_app_command_is_registered_without_importing_streamlit():
    import subprocess

    code = ("import sys; from retrieval.cli import main\n"
            "try: main(['serve', '--help'])\nexcept SystemExit: pass\n"
            "assert 'streamlit' not in sys.modules, 'serve --help imported streamlit'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--llm" in done.stdout


