"""`qinfra gate --stack`: measure the pinned artifacts of an opened stack (offline KLD for GGUF,
else online against the deployed endpoints), keep the report beside the artifact, pin it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qinfra.core.errors import DeployError, SpecError
from qinfra.core.formats import format_info
from qinfra.core.spec import StackSpec, Target, Variant
from qinfra.core.stack_keys import GATE_REPORT

if TYPE_CHECKING:
    from qinfra.deploy.operations import Stack
    from qinfra.quality.gate import GateResult


def gate_stack(stack: Stack, text: Path | None, prompts: Path | None) -> tuple[GateResult, str]:
    """The gate's result and the stack-file diff that pins its report. What it measures must be
    in the store, so missing artifacts are pushed and pinned first, as `up` does."""
    from qinfra.artifacts.fetch import cache_dir
    from qinfra.quality.gate import run_gate

    spec = stack.ensure_artifacts()
    pins = {v: spec.variants.of(v).artifact for v in Variant}
    unpinned = [v.value for v, uri in pins.items() if uri is None]
    if unpinned:
        raise SpecError(f"stack {spec.name} pins no artifact for {', '.join(unpinned)}; the gate "
                        "measures pinned artifacts. To fix: qinfra artifacts push --stack "
                        f"{spec.name}")
    base_uri, quant_uri = str(pins[Variant.BASELINE]), str(pins[Variant.QUANTIZED])
    store = quant_uri.rstrip("/").rpartition("/")[0]
    overrides = spec.gate.thresholds()
    if all(format_info(spec.variants.of(v).format).is_gguf for v in Variant):
        result = run_gate(base_uri, quant_uri, store=store, cache=cache_dir(stack.path),
                          text=text, overrides=overrides, prompts=prompts,
                          formats=(spec.variants.baseline.format, spec.variants.quantized.format))
    else:
        result = _online(stack, spec, store, prompts, overrides)
    return result, stack.record({GATE_REPORT: result.report_uri})


def _online(stack: Stack, spec: StackSpec, store: str, prompts: Path | None,
            overrides: dict[str, object]) -> GateResult:
    """The online method against the endpoints the deployed stack exports (on the stack's own
    state backend)."""
    from qinfra.quality.gate import run_online_gate

    variants = stack.deployer.outputs().get("variants") or {}
    endpoints = {v: (variants.get(v.value) or {}).get("endpoint") for v in Variant}
    down = [v.value for v, ep in endpoints.items() if not ep]
    if down:
        raise DeployError(f"stack {spec.name} exports no endpoint for {', '.join(down)}; the "
                          "online gate asks both running variants. To fix: qinfra up --stack "
                          f"{spec.name} with both variants running (stage ab_test), then gate")
    from qinfra.deploy.demo_question import api_key

    key = api_key(stack.project.run_dir, spec.name) if spec.target is Target.LOCAL else None
    return run_online_gate(spec, {v: str(ep) for v, ep in endpoints.items()}, store=store,
                           prompts=prompts, overrides=overrides, api_key=key)
