"""The router's configuration: a JSON or YAML file, loaded into one frozen dataclass.

The file is what the deployment writes and what a rollout edits; the router re-reads it when it
changes, so the file alone says which weights are live.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML, YAMLError

from qinfra.core.errors import SpecError, suggest
from qinfra.core.fileio import open_atomic
from qinfra.core.spec import Variant


class RouterConfigError(SpecError):
    """A router config file that is missing, unreadable or malformed."""


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router reads from its file. Durations are seconds, shares percent."""

    replicas: MappingProxyType[Variant, tuple[str, ...]]
    quantized_percent: float = 0.0
    salt: str = "qinfra"
    key_header: str = "X-Qinfra-User"
    cookie: str = "qinfra_user"
    shadow_percent: float = 0.0
    shadow_queue: int = 64
    shadow_workers: int = 2
    max_in_flight: int = 256
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 300.0
    retry_after_s: int = 1
    source: str = field(default="", compare=False)

    def replicas_of(self, variant: Variant) -> tuple[str, ...]:
        return self.replicas.get(variant, ())


_FIELDS = {f.name: f for f in dataclasses.fields(RouterConfig) if f.name not in ("replicas", "source")}
_PERCENTS = ("quantized_percent", "shadow_percent")
_POSITIVE_INTS = ("shadow_queue", "shadow_workers", "max_in_flight", "retry_after_s")
_POSITIVE_FLOATS = ("connect_timeout_s", "read_timeout_s")
_STRINGS = ("salt", "key_header", "cookie")


def load_config(path: Path) -> RouterConfig:
    """Read and validate the file at `path` (.json, else YAML).

    Raises RouterConfigError naming the file, the key, the value and what is allowed; whatever
    the bytes are (not UTF-8, nested past the parser's recursion limit), never anything else.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RouterConfigError(f"router config {path}: cannot read it ({exc.strerror}).") from exc
    except UnicodeDecodeError as exc:
        raise RouterConfigError(f"router config {path}: not UTF-8 text (byte {exc.start}: "
                                f"{exc.object[exc.start:exc.start + 1]!r}).") from exc
    try:
        raw = json.loads(text) if Path(path).suffix == ".json" else YAML(typ="safe").load(text)
    except (ValueError, YAMLError) as exc:
        raise RouterConfigError(f"router config {path}: not valid JSON/YAML ({exc}).") from exc
    except RecursionError as exc:
        raise RouterConfigError(f"router config {path}: nested too deeply to parse.") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: str = "router config") -> RouterConfig:
    """Validate the mapping `raw` into a RouterConfig; raises RouterConfigError."""
    if not isinstance(raw, dict):
        raise RouterConfigError(f"{source}: expected a mapping of settings, got {type(raw).__name__}.")
    allowed = ["replicas", *_FIELDS]
    for key in raw:
        if key not in allowed:
            raise RouterConfigError(
                f"{source}: unknown key '{key}'.{suggest(str(key), allowed)} "
                f"Allowed: {', '.join(allowed)}."
            )
    values: dict[str, Any] = {name: _field(source, name, raw[name]) for name in _FIELDS if name in raw}
    config = RouterConfig(replicas=_replicas(source, raw.get("replicas")), source=source, **values)
    shares = ((Variant.QUANTIZED, config.quantized_percent),
              (Variant.BASELINE, 100.0 - config.quantized_percent))  # stage full: none to baseline
    for variant, share in shares:
        if share > 0 and not config.replicas_of(variant):
            raise RouterConfigError(
                f"{source}: replicas.{variant} is empty but the {variant} variant gets traffic. "
                f"To fix: list its replica URLs, or set quantized_percent to "
                f"{'0' if variant is Variant.QUANTIZED else 'the quantized share'}."
            )
    if config.shadow_percent > 0 and not config.replicas_of(Variant.QUANTIZED):
        raise RouterConfigError(
            f"{source}: shadow_percent is {config.shadow_percent} but replicas.quantized is empty. "
            "To fix: list the quantized replicas or set shadow_percent to 0."
        )
    return config


def config_mapping(config: RouterConfig) -> dict[str, Any]:
    """The plain mapping `parse_config` reads back into an equal config."""
    out: dict[str, Any] = {"replicas": {str(v): list(urls) for v, urls in config.replicas.items()}}
    out.update({name: getattr(config, name) for name in _FIELDS})
    return out


def write_config(path: Path, config: RouterConfig) -> None:
    """Write `config` as JSON, atomically: a router polling the file never reads half of it."""
    with open_atomic(Path(path)) as out:
        out.write(json.dumps(config_mapping(config), indent=2).encode() + b"\n")


def _field(source: str, name: str, value: Any) -> Any:
    """One scalar setting, checked against its kind; bool is refused where a number is meant."""
    if name in _STRINGS:
        if not isinstance(value, str) or not value.strip():
            raise RouterConfigError(f"{source}: {name} must be a non-empty string, got {value!r}.")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RouterConfigError(f"{source}: {name} must be a number, got {value!r}.")
    if name in _PERCENTS:
        if not 0 <= value <= 100 or abs(value * 100 - round(value * 100)) > 1e-6:
            raise RouterConfigError(
                f"{source}: {name} must be within 0..100 with at most two decimals, got {value!r}."
            )
        return float(value)
    if name in _POSITIVE_INTS:
        if not isinstance(value, int) or value < 1:
            raise RouterConfigError(f"{source}: {name} must be a whole number >= 1, got {value!r}.")
        return value
    assert name in _POSITIVE_FLOATS, name
    if value <= 0:
        raise RouterConfigError(f"{source}: {name} must be positive seconds, got {value!r}.")
    return float(value)


def _replicas(source: str, raw: Any) -> MappingProxyType[Variant, tuple[str, ...]]:
    """`{baseline: [url, ...], quantized: [url, ...]}` with http(s)://host:port base URLs."""
    if not isinstance(raw, dict):
        raise RouterConfigError(
            f"{source}: replicas must map each variant to a list of URLs, got {raw!r}."
        )
    out: dict[Variant, tuple[str, ...]] = {}
    for name, urls in raw.items():
        try:
            variant = Variant(name)
        except ValueError:
            allowed = [v.value for v in Variant]
            raise RouterConfigError(
                f"{source}: replicas.{name}: unknown variant.{suggest(str(name), allowed)} "
                f"Allowed: {', '.join(allowed)}."
            ) from None
        if not isinstance(urls, list):
            raise RouterConfigError(f"{source}: replicas.{name} must be a list of URLs, got {urls!r}.")
        out[variant] = tuple(_url(source, f"replicas.{name}", u) for u in urls)
        if len(set(out[variant])) != len(out[variant]):
            raise RouterConfigError(f"{source}: replicas.{name} lists a URL twice: {urls!r}.")
    return MappingProxyType(out)


def _url(source: str, key: str, url: Any) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise RouterConfigError(
            f"{source}: {key}: {url!r} is not a base URL. To fix: write it as http://HOST:PORT."
        )
    return url.rstrip("/")
