"""Settings: defaults < TOML file < SHOPASSIST_* environment < explicit overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from retrieval.config import HnswParams, Settings, load_settings


def write_toml(folder: Path, body: str, name: str = "shopassist.toml") -> Path:
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ./shopassist.toml is read when present: never let the repository's own file leak in.
    monkeypatch.chdir(tmp_path)


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.hnsw == HnswParams()
    assert settings.index_dir == Path("data/index")
    assert settings.chroma_host == ""


def test_settings_are_frozen_and_keyword_only() -> None:
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(Path("x"))  # type: ignore[misc]


def test_toml_file_sets_values_and_types(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[retrieval]
index_dir = "idx"
profile = "offline"
batch_size = 8
url_timeout_s = 3
chroma_port = 9001

[retrieval.hnsw]
max_neighbors = 48
ef_search = 64
""", name="custom.toml")
    settings = load_settings(path, environ={})
    assert settings.index_dir == Path("idx")
    assert isinstance(settings.index_dir, Path)
    assert settings.profile == "offline"
    assert settings.batch_size == 8
    assert settings.url_timeout_s == 3.0 and isinstance(settings.url_timeout_s, float)
    assert settings.chroma_port == 9001
    assert settings.hnsw == HnswParams(max_neighbors=48, ef_search=64)
    # Untouched values keep their defaults.
    assert settings.decode_workers == Settings().decode_workers


def test_other_tables_in_the_file_are_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[assistant]\nmodel = "x"\n[retrieval]\nbatch_size = 4\n')
    assert load_settings(path, environ={}).batch_size == 4


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[retrieval]\nbatch_size = 5\n", name="elsewhere.toml")
    assert load_settings(environ={"SHOPASSIST_CONFIG": str(path)}).batch_size == 5


def test_default_file_in_working_directory_is_read(tmp_path: Path) -> None:
    write_toml(tmp_path, "[retrieval]\nbatch_size = 7\n")
    assert load_settings(environ={}).batch_size == 7


def test_explicit_file_wins_over_environment_variable(tmp_path: Path) -> None:
    a = write_toml(tmp_path, "[retrieval]\nbatch_size = 1\n", name="a.toml")
    b = write_toml(tmp_path, "[retrieval]\nbatch_size = 2\n", name="b.toml")
    assert load_settings(a, environ={"SHOPASSIST_CONFIG": str(b)}).batch_size == 1


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_config_file_is_an_error(tmp_path: Path, via_env: bool) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match=r"nope\.toml"):
        if via_env:
            load_settings(environ={"SHOPASSIST_CONFIG": str(missing)})
        else:
            load_settings(missing, environ={})


def test_unknown_key_names_the_key_and_lists_known_ones(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[retrieval]\nbatch_sise = 8\n")
    with pytest.raises(ValueError, match="batch_sise") as info:
        load_settings(path, environ={})
    assert "batch_size" in str(info.value)  # the known settings are listed
    assert str(path) in str(info.value)


def test_unknown_hnsw_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[retrieval.hnsw]\nef = 8\n")
    with pytest.raises(ValueError, match=r"'ef'.*ef_search"):
        load_settings(path, environ={})


def test_hnsw_must_be_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[retrieval]\nhnsw = 5\n")
    with pytest.raises(ValueError, match=r"hnsw.*table"):
        load_settings(path, environ={})


def test_retrieval_must_be_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "retrieval = 5\n")
    with pytest.raises(ValueError, match=r"\[retrieval\]"):
        load_settings(path, environ={})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[retrieval\nbatch_size = 8\n")
    with pytest.raises(ValueError, match="not valid TOML") as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("line", "setting"), [
    ('batch_size = "many"', "batch_size"),
    ("batch_size = 3.7", "batch_size"),       # would silently truncate to 3
    ("batch_size = true", "batch_size"),      # bool is an int subclass
    ('url_timeout_s = "soon"', "url_timeout_s"),
    ("url_timeout_s = false", "url_timeout_s"),
    ('device = ["cuda"]', "device"),          # would become the string "['cuda']"
    ("profile = 3", "profile"),
    ("index_dir = 1", "index_dir"),
])
def test_bad_type_in_file_is_an_error(tmp_path: Path, line: str, setting: str) -> None:
    path = write_toml(tmp_path, f"[retrieval]\n{line}\n")
    with pytest.raises(ValueError, match=setting):
        load_settings(path, environ={})


def test_bad_type_in_hnsw_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[retrieval.hnsw]\nef_search = "lots"\n')
    with pytest.raises(ValueError, match="ef_search"):
        load_settings(path, environ={})


def test_environment_overrides_defaults_with_coercion() -> None:
    settings = load_settings(environ={
        "SHOPASSIST_BATCH_SIZE": "16",
        "SHOPASSIST_URL_TIMEOUT_S": "2.5",
        "SHOPASSIST_INDEX_DIR": "/srv/index",
        "SHOPASSIST_DEVICE": "cpu",
        "SHOPASSIST_MAX_IMAGE_PIXELS": " 1000 ",
    })
    assert settings.batch_size == 16
    assert settings.url_timeout_s == 2.5
    assert settings.index_dir == Path("/srv/index")
    assert settings.device == "cpu"
    assert settings.max_image_pixels == 1000


def test_hnsw_environment_variables() -> None:
    settings = load_settings(environ={"SHOPASSIST_HNSW_EF_SEARCH": "256",
                                      "SHOPASSIST_HNSW_SPACE": "ip"})
    assert settings.hnsw == HnswParams(ef_search=256, space="ip")


def test_hnsw_environment_merges_with_file_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[retrieval.hnsw]\nmax_neighbors = 48\nef_search = 64\n")
    settings = load_settings(path, environ={"SHOPASSIST_HNSW_EF_SEARCH": "300"})
    assert settings.hnsw.max_neighbors == 48  # from the file, kept
    assert settings.hnsw.ef_search == 300  # the environment wins
    assert settings.hnsw.ef_construction == HnswParams().ef_construction


@pytest.mark.parametrize(("name", "raw"), [
    ("SHOPASSIST_BATCH_SIZE", "sixteen"),
    ("SHOPASSIST_BATCH_SIZE", "8.5"),
    ("SHOPASSIST_URL_TIMEOUT_S", "fast"),
    ("SHOPASSIST_HNSW_EF_SEARCH", "x"),
    ("CHROMA_PORT", "http"),
])
def test_bad_environment_value_names_the_setting_and_value(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=repr(raw)):
        load_settings(environ={name: raw})


def test_chroma_host_and_port_from_chroma_variables() -> None:
    settings = load_settings(environ={"CHROMA_HOST": "db.local", "CHROMA_PORT": "9000"})
    assert settings.chroma_host == "db.local"
    assert settings.chroma_port == 9000


def test_shopassist_chroma_variables_win_over_chroma_ones() -> None:
    settings = load_settings(environ={
        "CHROMA_HOST": "other", "SHOPASSIST_CHROMA_HOST": "mine",
        "CHROMA_PORT": "1", "SHOPASSIST_CHROMA_PORT": "2",
    })
    assert (settings.chroma_host, settings.chroma_port) == ("mine", 2)


def test_precedence_defaults_file_environment_overrides(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[retrieval]
batch_size = 8
decode_workers = 4
device = "cuda"
profile = "clip"
""")
    env = {"SHOPASSIST_DECODE_WORKERS": "6", "SHOPASSIST_DEVICE": "cpu"}
    settings = load_settings(path, environ=env, device="mps", profile=None)
    assert settings.precision == "auto"  # default
    assert settings.batch_size == 8  # file
    assert settings.decode_workers == 6  # environment beats file
    assert settings.device == "mps"  # override beats environment
    assert settings.profile == "clip"  # a None override means "not given"


def test_environment_of_the_process_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPASSIST_BATCH_SIZE", "3")
    assert load_settings().batch_size == 3


def test_replace_ignores_none() -> None:
    settings = Settings().replace(batch_size=None, device="cpu")
    assert settings.batch_size == Settings().batch_size
    assert settings.device == "cpu"


def test_to_dict_is_json_serialisable_and_complete() -> None:
    settings = Settings(index_dir=Path("/x/y"), hnsw=HnswParams(ef_search=7))
    data = json.loads(json.dumps(settings.to_dict()))
    assert data["index_dir"] == "/x/y"
    assert data["hnsw"]["ef_search"] == 7
    assert set(data) == {f.name for f in dataclasses.fields(Settings)}
