"""The data behind a format recommendation: the preference order with its reasons and recipes
(data/format_preferences.toml) and the quantized checkpoints known on the hub
(data/hub_artifacts.toml). Plain tables, so the order is data and not an if-chain."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache

from qinfra.core.data import DATA_DIR
from qinfra.core.engines import Engine
from qinfra.core.formats import Format, FormatKind, format_info


@dataclass(frozen=True)
class Preference:
    """One row of the order: a format, why it ranks there, and how its artifact is made."""

    format: Format
    kind: FormatKind
    rank: int  # 0 is best, within its kind
    reason: str
    recipe: str
    qinfra_runs: bool  # `qinfra artifacts push` runs the recipe today
    sources: str
    make: tuple[tuple[str, str], ...] = ()  # the qinfra:variants.<v>.recipe init writes


@dataclass(frozen=True)
class HubArtifact:
    repo: str
    source: str


@dataclass(frozen=True)
class Preferences:
    engines: dict[str, tuple[Engine, ...]]  # by target name
    rows: dict[Format, Preference]

    def of(self, fmt: Format) -> Preference:
        return self.rows[fmt]


@cache
def preferences() -> Preferences:
    """The shipped order; ValueError when a row names a format of the wrong kind (a test
    checks the table)."""
    raw = tomllib.loads((DATA_DIR / "format_preferences.toml").read_text())
    rows: dict[Format, Preference] = {}
    for kind in FormatKind:
        for rank, row in enumerate(raw[kind.value]):
            fmt = Format(row["format"])
            if format_info(fmt).kind is not kind or fmt in rows:
                raise ValueError(f"format_preferences.toml: {fmt} listed twice or under {kind}")
            rows[fmt] = Preference(fmt, kind, rank, row["reason"], row["recipe"],
                                   bool(row["qinfra_runs"]), row["sources"],
                                   tuple(row.get("make", {}).items()))
    engines = {target: tuple(Engine(e) for e in order) for target, order in raw["engines"].items()}
    return Preferences(engines, rows)


@cache
def hub_artifacts() -> dict[str, dict[Format, HubArtifact]]:
    """Known quantized hub checkpoints by lower-cased base model id."""
    raw = tomllib.loads((DATA_DIR / "hub_artifacts.toml").read_text())
    return {model: {Format(fmt): HubArtifact(**row) for fmt, row in formats.items()}
            for model, formats in raw.items()}


def hub_artifact(model_id: str, fmt: Format) -> HubArtifact | None:
    """The known hub checkpoint of `model_id` in `fmt`; aliases of a shipped model resolve
    to its id (data/models/*.json)."""
    from qinfra.core.modelinfo import shipped_models

    shipped = shipped_models().get(model_id.lower())
    key = shipped.source.lower() if shipped else model_id.lower()
    return hub_artifacts().get(key, {}).get(fmt)


__all__ = ["HubArtifact", "Preference", "Preferences", "hub_artifact", "hub_artifacts", "preferences"]
