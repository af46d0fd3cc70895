"""GPU and instance catalog, loaded once from the shipped tables in data/."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache

from qinfra.core.data import DATA_DIR
from qinfra.core.errors import SpecError, suggest


@dataclass(frozen=True)
class Gpu:
    """One GPU model. memory_gib is what the driver reports as total (what vLLM budgets from)."""

    name: str
    memory_gib: float
    compute_capability: float
    description: str = ""
    bandwidth_gbps: float | None = None
    bf16: bool = True
    fp8: bool = False
    source: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu: str
    gpus: int
    vcpus: int
    ram_gib: float
    usd_per_hour: float


@dataclass(frozen=True)
class CpuInstanceType:
    """A machine without GPUs, for qinfra's own processes (the router)."""

    name: str
    vcpus: int
    ram_gib: float
    usd_per_hour: float


@dataclass(frozen=True)
class Catalog:
    gpus: dict[str, Gpu]
    instances: dict[str, InstanceType]
    price_region: str
    price_date: str
    cpu_instances: dict[str, CpuInstanceType] = field(default_factory=dict)

    def gpu(self, name: str) -> Gpu:
        try:
            return self.gpus[name]
        except KeyError:
            allowed = ", ".join(self.gpus)
            raise SpecError(
                f"unknown GPU '{name}'.{suggest(name, self.gpus)} Known: {allowed}; or give "
                "--gpu-memory-gib and --compute-capability for another GPU."
            ) from None

    def instances_for(self, gpu: str) -> list[InstanceType]:
        """Instance types carrying `gpu`, smallest first."""
        rows = [it for it in self.instances.values() if it.gpu == gpu]
        return sorted(rows, key=lambda it: (it.gpus, it.usd_per_hour, it.name))


def _read(name: str) -> dict:
    return tomllib.loads((DATA_DIR / name).read_text())


@cache
def catalog() -> Catalog:
    gpus = {name: Gpu(name=name, **row) for name, row in _read("gpus.toml").items()}
    raw = _read("instances.toml")
    instances = {name: InstanceType(name=name, **row) for name, row in raw["types"].items()}
    cpus = {name: CpuInstanceType(name=name, **row) for name, row in raw.get("cpu_types", {}).items()}
    meta = raw["meta"]
    return Catalog(gpus, instances, meta["price_region"], meta["price_date"], cpus)


def adhoc_gpu(memory_gib: float, compute_capability: float) -> Gpu:
    """A GPU not in the catalog, described by its reported memory and capability."""
    if memory_gib <= 0:
        raise SpecError(f"--gpu-memory-gib must be > 0, got {memory_gib}")
    return Gpu(
        name=f"custom-{memory_gib:g}gib",
        memory_gib=memory_gib,
        compute_capability=compute_capability,
        bf16=compute_capability >= 8.0,
        fp8=compute_capability >= 8.9,
        source="given on the command line",
    )
