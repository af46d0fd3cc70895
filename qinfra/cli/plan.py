"""`qinfra plan`: a stack's fleets or one ad-hoc engine instance, as a table or JSON.

Imported only when `plan` runs; the planner, the model facts and rich load inside the command,
and an ad-hoc plan of a local or shipped model never loads pydantic, numpy or huggingface_hub.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json
from qinfra.core.engines import Engine
from qinfra.core.errors import QinfraError

FORMATS = ("bf16", "fp16", "fp8", "int8", "awq", "gptq", "w4a16", "w8a16", "gguf-f16",
           "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_k_s", "gguf-q3_k_m", "gguf-q2_k")
GPUS = ("t4", "v100", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-80gb", "h200")


@dataclass(frozen=True)
class AdhocPlan:
    """The ad-hoc `qinfra plan --model ...` arguments as click parsed them (None: not given)."""

    model: str | None
    revision: str
    fmt: str | None
    engine: str | None
    gpu: str | None
    gpu_memory_gib: float | None
    compute_capability: float | None
    cpu_memory_gib: float | None
    tensor_parallel_size: int
    max_model_len: int | None
    gpu_memory_utilization: float | None
    kv_cache_dtype: str
    max_num_batched_tokens: int | None
    max_num_seqs: int | None
    cuda_graph_gib: float | None
    parallel: int | None

    def check(self) -> None:
        """Usage errors (exit 2) that click's per-option types cannot see."""
        if not self.model or not self.fmt:
            raise click.UsageError("give --stack NAME, or --model and --format for an ad-hoc plan")
        if sum(x is not None for x in (self.gpu, self.gpu_memory_gib, self.cpu_memory_gib)) != 1:
            raise click.UsageError("give exactly one of --gpu, --gpu-memory-gib, --cpu-memory-gib")
        if self.compute_capability is not None and self.gpu_memory_gib is None:
            raise click.UsageError("--compute-capability goes with --gpu-memory-gib")


# The ad-hoc options in --help order; each maps to the AdhocPlan field of its name.
_ADHOC_OPTIONS = (
    click.option("--model", help="Ad-hoc: hub id (owner/name), a local model dir, or a .gguf file."),
    click.option("--revision", default="main", show_default=True, help="Ad-hoc: hub revision."),
    click.option("--format", "fmt", type=click.Choice(FORMATS), help="Ad-hoc: weight format."),
    click.option("--engine", type=click.Choice([e.value for e in Engine]), default=None,
                 help="Ad-hoc: engine [default: llama.cpp for gguf-*, else vllm]."),
    click.option("--gpu", type=click.Choice(GPUS), help="Ad-hoc: a GPU from the catalog."),
    click.option("--gpu-memory-gib", type=click.FloatRange(min=0, min_open=True),
                 help="Ad-hoc: another GPU's total memory as the driver reports it (GiB)."),
    click.option("--compute-capability", type=click.FloatRange(min=3.0, max=20.0), default=None,
                 help="Ad-hoc: that GPU's compute capability [default: 8.0]."),
    click.option("--cpu-memory-gib", type=click.FloatRange(min=0, min_open=True),
                 help="Ad-hoc, llama.cpp: plan in host RAM of this size instead of a GPU."),
    click.option("--tensor-parallel-size", "-tp", type=click.IntRange(min=1), default=1,
                 show_default=True, help="Ad-hoc: GPUs per engine instance."),
    click.option("--max-model-len", type=click.IntRange(min=16),
                 help="Ad-hoc: longest request [default: the model's context length]."),
    click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True),
                 help="Ad-hoc: vLLM's share of total GPU memory [default: 0.92, vLLM 0.33.0]."),
    click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto",
                 show_default=True, help="Ad-hoc: KV cache element type."),
    click.option("--max-num-batched-tokens", type=click.IntRange(min=16),
                 help="Ad-hoc: vLLM's profiled batch [default: by GPU class, as vLLM picks]."),
    click.option("--max-num-seqs", type=click.IntRange(min=1),
                 help="Ad-hoc: vLLM's running-sequence limit [default: by GPU class]."),
    click.option("--cuda-graph-gib", type=click.FloatRange(min=0),
                 help="Ad-hoc: CUDA-graph pool to subtract (0 for --enforce-eager or vLLM < 0.21) "
                      "[default: an estimate]."),
    click.option("--parallel", type=click.IntRange(min=1),
                 help="Ad-hoc, llama.cpp: server slots [default: as many as fit]."),
)


def _adhoc_options(command: Callable[..., None]) -> Callable[..., None]:
    """Apply _ADHOC_OPTIONS as if stacked as decorators in that order."""
    for option in reversed(_ADHOC_OPTIONS):
        command = option(command)
    return command


@click.command("plan", cls=Command)
@click.option("--stack", "stack", help="Plan this stack (stacks/Pulumi.<stack>.yaml).")
@click.option("--compare", is_flag=True, help="With --stack: every format the engines load "
              "on the stack's fleet, side by side, and the recommended pair (as `qinfra init`).")
@_adhoc_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan(stack: str | None, compare: bool, as_json: bool, **adhoc: Any) -> None:
    """Memory plan: GPUs, tensor parallelism, replicas, engine flags and cost.

    \b
    For a stack:  qinfra plan --stack prod
    Compare:      qinfra plan --stack prod --compare
    Ad-hoc:       qinfra plan --model DIR_OR_HUB_ID --format awq --gpu l4 --json

    Every memory term is shown per GPU rank, and the estimated ones say so. Exit codes:
    0 the plan fits, 1 it does not fit or the combination is refused, 2 bad usage.
    """
    args = AdhocPlan(**adhoc)
    if stack and args.model:
        raise click.UsageError("give either --stack or --model, not both")
    if compare and not stack:
        raise click.UsageError("--compare goes with --stack NAME")
    if stack and compare:
        _compare_stack(stack, as_json)
    if stack:
        _plan_stack(stack, as_json)
    else:
        args.check()
        _plan_adhoc(args, as_json)


def _plan_adhoc(args: AdhocPlan, as_json: bool) -> NoReturn:
    """Plan one engine instance of args.model; exits 0 when it fits, 1 when not."""
    from qinfra.core import modelinfo
    from qinfra.core.engines import engines_where, traits
    from qinfra.core.formats import Format, KvCacheDtype, default_engine
    from qinfra.core.hardware import adhoc_gpu, catalog
    from qinfra.planning.planner import EngineOptions, plan_engine

    assert args.model is not None and args.fmt is not None  # AdhocPlan.check ran
    engine = Engine(args.engine) if args.engine else default_engine(args.fmt)
    if args.cpu_memory_gib is not None and not traits(engine).cpu_fleet:
        raise click.UsageError("--cpu-memory-gib plans are for --engine "
                               f"{engines_where(lambda e: e.cpu_fleet)}")
    device = None
    if args.gpu:
        device = catalog().gpu(args.gpu)
    elif args.gpu_memory_gib is not None:
        device = adhoc_gpu(args.gpu_memory_gib, args.compute_capability or 8.0)
    opts = EngineOptions(
        engine=engine,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_dtype=KvCacheDtype(args.kv_cache_dtype),
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        cuda_graph_gib=args.cuda_graph_gib,
        parallel=args.parallel,
    )
    try:
        info = modelinfo.load(args.model, args.revision)
    except QinfraError as exc:
        if as_json:
            echo_json({"fits": False, "errors": [exc.message], "warnings": []})
        raise
    result = plan_engine(info, Format(args.fmt), device, opts,
                         host_memory_gib=args.cpu_memory_gib or 0)
    if as_json:
        from qinfra.cli.views import engine_plan_dict

        echo_json(engine_plan_dict(result))
    else:
        from qinfra.cli.views import print_engine_plan

        print_engine_plan(_stdout(), result)
    sys.exit(0 if result.fits else 1)


def _plan_stack(stack: str, as_json: bool) -> NoReturn:
    """Plan every variant's fleet of a stack; exits 0 when all fit, 1 when one does not."""
    from qinfra.core.spec import load_stack
    from qinfra.planning.stack import plan_for

    result = plan_for(load_stack(stack))
    if as_json:
        from qinfra.cli.views import stack_plan_dict

        echo_json(stack_plan_dict(result))
    else:
        from qinfra.cli.views import print_stack_plan

        print_stack_plan(_stdout(), result)
    sys.exit(0 if result.fits else 1)


def _compare_stack(stack: str, as_json: bool) -> NoReturn:
    """The stack's formats against every other the engines load on its fleet; exits 0 when a
    pair is recommended, 1 when nothing fits."""
    from qinfra.core.spec import load_stack
    from qinfra.deploy.init_stack import compare_stack

    spec = load_stack(stack)
    result = compare_stack(spec)
    current = (spec.variants.baseline.format.value, spec.variants.quantized.format.value)
    if as_json:
        from qinfra.cli.compare_view import comparison_dict

        echo_json({"stack": stack, "engine": spec.serving.engine.value,
                   "formats": {"baseline": current[0], "quantized": current[1]},
                   **comparison_dict(result)})
    else:
        from qinfra.cli.compare_view import print_comparison

        print_comparison(_stdout(), result, current)
    sys.exit(0 if result.recommendation else 1)


def _stdout() -> Any:
    """A rich console on stdout (rich is imported only by commands that print tables)."""
    from rich.console import Console

    return Console()
