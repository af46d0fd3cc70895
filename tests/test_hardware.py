"""The shipped GPU and instance tables."""

from __future__ import annotations

import pytest

from qinfra.core.errors import SpecError
from qinfra.core.hardware import adhoc_gpu, catalog

REQUIRED_GPUS = {"t4", "v100", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-80gb", "h200"}
REQUIRED_FAMILIES = {"g4dn", "p3", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e"}
# Compute capability from NVIDIA's CUDA GPUs table.
CC = {"t4": 7.5, "v100": 7.0, "a10g": 8.6, "l4": 8.9, "l40s": 8.9, "a100-40gb": 8.0,
      "a100-80gb": 8.0, "h100-80gb": 9.0, "h200": 9.0}


def test_gpu_table():
    gpus = catalog().gpus
    assert set(gpus) >= REQUIRED_GPUS
    for name, gpu in gpus.items():
        assert gpu.compute_capability == CC[name]
        assert 0 < gpu.memory_gib < 200 and gpu.bandwidth_gbps and gpu.source
        assert gpu.fp8 == (gpu.compute_capability >= 8.9)
        assert gpu.bf16 == (gpu.compute_capability >= 8.0)
    # usable memory is below the marketing size
    assert gpus["a100-80gb"].memory_gib < 80 and gpus["t4"].memory_gib < 16


def test_instance_table():
    cat = catalog()
    families = {name.split(".")[0] for name in cat.instances}
    assert families >= REQUIRED_FAMILIES
    for it in cat.instances.values():
        assert it.gpu in cat.gpus
        assert it.gpus in (1, 2, 4, 8) and it.vcpus > 0 and it.ram_gib > 0 and it.usd_per_hour > 0
    assert cat.price_region and cat.price_date
    assert next(it.name for it in cat.instances_for("l4")) == "g6.xlarge"


def test_unknown_gpu_suggests():
    with pytest.raises(SpecError, match="Did you mean 'h100-80gb'"):
        catalog().gpu("h100")


def test_adhoc_gpu():
    gpu = adhoc_gpu(23.58, 8.6)
    assert gpu.memory_gib == 23.58 and gpu.bf16 and not gpu.fp8
