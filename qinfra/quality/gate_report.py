"""A gate report: the evidence a rollout rests on, content-addressed and kept in the artifact
store beside the quantized artifact (`<store>/gate/sha256-<hex>.json`), pinned in the stack file.

The name is the sha256 of the report's canonical bytes, which hold both artifacts' ids, the
text's (or prompts') hash, the thresholds and the figures, so a pin cannot be edited into
meaning other evidence, and a report read back is checked against its name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from qinfra.core.artifact_uri import parse_store_uri
from qinfra.core.errors import ArtifactError

REPORTS_DIR = "gate"
REPORT_VERSION = 1
_REPORT_URI = re.compile(r"^(?P<store>.+)/gate/(?P<id>sha256-[0-9a-f]{64})\.json$")


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"


class Method(StrEnum):
    """KLD: llama-perplexity over a text (GGUF); ONLINE: prompts to both running endpoints."""

    KLD = "kld"
    ONLINE = "online"


@dataclass(frozen=True)
class Subject:
    """One side of the comparison: where it came from, its artifact id when it is a pushed
    artifact, the sha256 of the file measured, and its format."""

    source: str
    artifact_id: str | None
    sha256: str | None
    format: str | None


@dataclass(frozen=True)
class GateReport:
    method: Method
    verdict: Verdict
    baseline: Subject
    quantized: Subject
    input_sha256: str  # the evaluation text's, or the prompt set's
    thresholds: dict[str, Any]
    metrics: dict[str, Any]
    reasons: tuple[str, ...] = ()
    tool: str | None = None  # the llama.cpp build, for the offline method
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON data; a non-finite figure (NaN logits of a broken file) becomes
        null, since JSON has no NaN and strict readers refuse Python's `NaN` token (the reasons
        name the value)."""
        doc = _finite(asdict(self))
        doc["version"] = REPORT_VERSION
        doc["method"], doc["verdict"] = self.method.value, self.verdict.value
        doc["reasons"] = list(self.reasons)
        return doc

    def to_bytes(self) -> bytes:
        """Canonical JSON: equal evidence, equal bytes, equal name."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()

    @property
    def report_id(self) -> str:
        return "sha256-" + hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> GateReport:
        try:
            doc = json.loads(data)
            if doc.pop("version", None) != REPORT_VERSION:
                raise ValueError(f"not a version {REPORT_VERSION} report")
            if not isinstance(doc.get("metrics"), dict):
                raise ValueError("its metrics are not a mapping")
            return cls(
                method=Method(doc.pop("method")),
                verdict=Verdict(doc.pop("verdict")),
                baseline=Subject(**doc.pop("baseline")),
                quantized=Subject(**doc.pop("quantized")),
                reasons=tuple(doc.pop("reasons")),
                **doc,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{where} is not a qinfra gate report ({exc}). To fix: run "
                                "`qinfra gate` again") from None


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def report_uri(store_uri: str, report_id: str) -> str:
    return f"{parse_store_uri(store_uri)}/{REPORTS_DIR}/{report_id}.json"


def split_report_uri(uri: str) -> tuple[str, str]:
    """(store URI, report id) of `<store>/gate/sha256-<hex>.json`; ArtifactError otherwise."""
    match = _REPORT_URI.match(uri)
    if match is not None:
        try:
            return parse_store_uri(match["store"]), match["id"]
        except ValueError:
            pass
    raise ArtifactError(f"'{uri}' is not a gate report URI (<store>/gate/sha256-<64 hex>.json). "
                        "To fix: pin the URI `qinfra gate --stack` printed")


def write_report(report: GateReport, store_uri: str) -> str:
    """Store the report beside the artifacts of `store_uri`; its URI. Writing the same evidence
    twice writes the same object."""
    from qinfra.artifacts.store_open import open_store

    open_store(store_uri).write(f"{REPORTS_DIR}/{report.report_id}.json", report.to_bytes())
    return report_uri(store_uri, report.report_id)


def read_report(uri: str) -> GateReport:
    """The report a pin names, checked against its name; ArtifactError when it is missing,
    altered, or not a report."""
    from qinfra.artifacts.store_open import open_store

    store, report_id = split_report_uri(uri)
    data = open_store(store).read(f"{REPORTS_DIR}/{report_id}.json")
    if data is None:
        raise ArtifactError(f"gate report {uri} is missing from its store. To fix: run "
                            "`qinfra gate` again")
    if "sha256-" + hashlib.sha256(data).hexdigest() != report_id:
        raise ArtifactError(f"gate report {uri} was altered after it was written (its bytes no "
                            "longer hash to its name). To fix: run `qinfra gate` again")
    return GateReport.from_bytes(data, uri)
