"""How a made artifact was made, as its manifest records it: the recipe, the source artifact's
id, each tool with its version and arguments, the calibration data's hash. No paths: the same
recipe over the same source gives the same manifest on any machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    """One tool run: its name, version (pinned build or package versions) and arguments."""

    tool: str
    version: str
    args: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "version": self.version, "args": list(self.args)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Step:
        return cls(str(doc["tool"]), str(doc["version"]), tuple(str(a) for a in doc["args"]))

    def __str__(self) -> str:
        return f"{self.tool} {' '.join(self.args)} [{self.version}]".replace("  ", " ")


@dataclass(frozen=True)
class MadeRecipe:
    """A recipe's record: `source` is the artifact id the input's files would have when pushed
    as they are (so provenance reaches back to the 16-bit checkpoint's own pin)."""

    name: str
    source: str
    steps: tuple[Step, ...]
    calibration_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "source": self.source,
                               "steps": [s.to_json() for s in self.steps]}
        if self.calibration_sha256:
            doc["calibration_sha256"] = self.calibration_sha256
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> MadeRecipe:
        return cls(str(doc["name"]), str(doc["source"]),
                   tuple(Step.from_json(s) for s in doc["steps"]),
                   doc.get("calibration_sha256"))

    @property
    def summary(self) -> str:
        return f"{self.name} ({' -> '.join(s.tool for s in self.steps)})"

    def lines(self) -> tuple[str, ...]:
        """What `qinfra artifacts verify` prints: the source, then one line per tool run."""
        out = [f"recipe {self.name} from {self.source}"]
        out += [f"  {i}. {step}" for i, step in enumerate(self.steps, 1)]
        if self.calibration_sha256:
            out.append(f"  calibration sha256 {self.calibration_sha256}")
        return tuple(out)
