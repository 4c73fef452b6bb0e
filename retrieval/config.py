"""Settings for the search engine: one TOML file, overridable by environment variables.

Precedence, lowest to highest: the defaults below, the ``[retrieval]`` table of the TOML
file named by ``SHOPASSIST_CONFIG`` (or ``./shopassist.toml`` when it exists), then
``SHOPASSIST_<FIELD>`` environment variables (``CHROMA_HOST`` / ``CHROMA_PORT`` are accepted
too, as Chroma's own tools use them), then explicit keyword overrides from the caller.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "SHOPASSIST_"
DEFAULT_CONFIG_FILE = Path("shopassist.toml")


@dataclass(frozen=True, kw_only=True)
class HnswParams:
    """Chroma HNSW parameters; the defaults are what ``benchmarks/hnsw_recall.py`` chose.

    On the 44k catalog, queries that fill only the text slot (a quarter of the fused
    vector) navigate a graph built on whole vectors poorly: top-10 recall 0.97 at
    ``ef_search`` 128, 0.99 at 256, for about 2 ms more per query. Photo queries are at
    1.00 either way. ``ef_search`` is stored with the collection when it is built.
    """

    space: str = "cosine"
    max_neighbors: int = 32
    ef_construction: int = 200
    ef_search: int = 256


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the engine reads from its environment.

    Attributes:
        index_dir: Root folder of the index; versions live in ``index_dir/versions/``.
        profile: Encoder profile: ``auto``, ``clip`` or ``offline``.
        clip_model: Hub id or folder of the CLIP / SigLIP model (``clip`` profile).
        text_model: Hub id or folder of the sentence-transformers text model.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
        batch_size: Images or texts per encoder call.
        decode_workers: Threads decoding images while the encoder runs (0 = in line).
        chroma_host: Chroma server host; empty means the embedded ``PersistentClient``.
        chroma_port: Chroma server port.
        max_image_pixels: Images above this many pixels are refused before decoding.
        max_image_bytes: Image files or downloads above this size are refused.
        url_timeout_s: Timeout for one image download attempt.
        url_retries: Extra attempts after a failed download.
        hnsw: Vector index parameters.
    """

    index_dir: Path = Path("data/index")
    profile: str = "auto"
    clip_model: str = "openai/clip-vit-base-patch32"
    text_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    decode_workers: int = 2
    chroma_host: str = ""
    chroma_port: int = 8000
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 20 * 1024 * 1024
    url_timeout_s: float = 10.0
    url_retries: int = 2
    hnsw: HnswParams = field(default_factory=HnswParams)

    def __post_init__(self) -> None:
        least = {"batch_size": 1, "decode_workers": 0, "chroma_port": 1,
                 "max_image_pixels": 1, "max_image_bytes": 1, "url_retries": 0}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ValueError(f"Setting {name!r} must be at least {low} "
                                 f"(got {getattr(self, name)}).")
        if not self.url_timeout_s > 0:  # also refuses NaN
            raise ValueError(f"Setting 'url_timeout_s' must be a positive number of seconds "
                             f"(got {self.url_timeout_s}).")

    def replace(self, **changes: Any) -> Settings:
        """Returns a copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as plain JSON-able values (for manifests)."""
        out = dataclasses.asdict(self)
        out["index_dir"] = str(self.index_dir)
        return out


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    if isinstance(annotation, str):
        annotation = {"Path": Path, "str": str, "int": int, "float": float, "bool": bool}.get(
            annotation, str
        )
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    type_name = getattr(annotation, "__name__", str(annotation))
    if not isinstance(value, str):
        # A typed value (from TOML) must already have the right type: int("3.7") would
        # silently truncate, and str(["a"]) would turn a list into a device name.
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
        }.get(annotation, False)
        if not ok:
            raise ValueError(
                f"Setting {name!r} = {value!r} is a {type(value).__name__}, not a valid "
                f"{type_name}."
            )
        return annotation(value)
    try:
        if annotation is bool:
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        return annotation(value.strip() if annotation in (int, float) else value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Setting {name!r} = {value!r} is not a valid {type_name}.") from exc


def _apply(cls: type, base: Any, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ValueError(f"Unknown setting {key!r} in {where}. Known settings: {known}.")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ValueError(f"Setting {key!r} in {where} must be a table.")
            changes[key] = _apply(hints[key], getattr(base, key), value, f"{where} [{key}]")
        else:
            changes[key] = _coerce(value, hints[key], key)
    return dataclasses.replace(base, **changes)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolves the settings from defaults, the TOML file, the environment and overrides.

    Args:
        config_file: TOML file to read; defaults to ``$SHOPASSIST_CONFIG`` or
            ``./shopassist.toml`` when present.
        environ: Environment to read (defaults to ``os.environ``).
        **overrides: Explicit values (e.g. from CLI flags); ``None`` means "not given".

    Returns:
        The resolved, frozen settings.

    Raises:
        FileNotFoundError: ``config_file`` (or ``$SHOPASSIST_CONFIG``) does not exist.
        ValueError: A key is unknown or a value has the wrong type.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Config file {path} does not exist. Create it or unset SHOPASSIST_CONFIG."
            )
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"Config file {path} is not valid TOML: {exc}.") from None
        section = data.get("retrieval", {})
        if not isinstance(section, dict):
            raise ValueError(f"In {path}, 'retrieval' must be a table ([retrieval]).")
        settings = _apply(Settings, settings, section, str(path))

    from_env: dict[str, Any] = {}
    hnsw_env: dict[str, Any] = {}
    for fld in dataclasses.fields(Settings):
        if fld.name == "hnsw":
            continue
        raw = env.get(ENV_PREFIX + fld.name.upper())
        if raw is not None:
            from_env[fld.name] = raw
    for fld in dataclasses.fields(HnswParams):
        raw = env.get(f"{ENV_PREFIX}HNSW_{fld.name.upper()}")
        if raw is not None:
            hnsw_env[fld.name] = raw
    for name in ("CHROMA_HOST", "CHROMA_PORT"):
        if name in env and ENV_PREFIX + name not in env:
            from_env[name.lower()] = env[name]
    if hnsw_env:
        from_env["hnsw"] = hnsw_env
    settings = _apply(Settings, settings, from_env, "the environment")
    return settings.replace(**overrides)
