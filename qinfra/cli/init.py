"""`qinfra init`: compare every format the engines and GPUs support for a model, recommend a
baseline and a quantized variant, and write the stack file for review.

Imported only when `init` runs; the planner, the model facts and rich load inside the command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json
from qinfra.core.engines import Engine
from qinfra.core.errors import Declined, NoFitError, SpecError

TARGETS = ("local", "aws", "kubernetes")  # spelled out so `init --help` loads no schema
# The catalog's GPUs, as `qinfra plan --gpu` lists them (tests/test_init.py checks the table).
GPUS = ("t4", "v100", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-80gb", "h200")


def _gpu_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    """`--gpus l4,a10g`: catalog names, comma-separated."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in GPUS]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: give catalog GPUs, "
                                 f"comma-separated, from {', '.join(GPUS)}")
    return names


@click.command("init", cls=Command)
@click.option("--model", required=True, metavar="ID_OR_DIR",
              help="Hub id (owner/name), a local model directory holding config.json, a .gguf "
                   "file, or qinfra-demo.")
@click.option("--target", type=click.Choice(TARGETS), default="aws", show_default=True,
              help="Where the stack runs.")
@click.option("--engine", type=click.Choice([e.value for e in Engine]), default=None,
              help="Only this engine [default: vllm then llama.cpp on GPUs; llama.cpp on local].")
@click.option("--stack", "stack", metavar="NAME", default=None,
              help="Stack name: writes stacks/Pulumi.<NAME>.yaml [default: from the model's name].")
@click.option("--max-model-len", type=click.IntRange(min=16), default=None,
              help="Longest request [default: the model's context, at most 8192 (4096 local)].")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Sequences at max-model-len the fleet holds at once [default: 32, local 4].")
@click.option("--gpus", callback=_gpu_list, metavar="LIST", default=None,
              help="GPUs the planner may choose, comma-separated [default: the whole catalog].")
@click.option("--cpu-memory-gib", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Target local: RAM llama.cpp may use [default: half of this machine's].")
@click.option("--store", metavar="URI", default=None,
              help="Artifact store, s3://bucket/prefix or file:///abs/path [default: by target].")
@click.option("--revision", default="main", show_default=True, help="Hub revision of the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison and the file as JSON.")
@click.option("--yes", "-y", is_flag=True, help="Write without asking.")
@click.option("--force", is_flag=True, help="Replace an existing stack file.")
def init(model: str, target: str, engine: str | None, stack: str | None, max_model_len: int | None,
         concurrency: int | None, gpus: tuple[str, ...] | None, cpu_memory_gib: float | None,
         store: str | None, revision: str, as_json: bool, yes: bool, force: bool) -> None:
    """Compare formats for a model, recommend a baseline and a quantized variant, write the stack.

    \b
    Example:
      qinfra init --model meta-llama/Llama-3.1-8B-Instruct --target aws --gpus l4,a10g
      qinfra init --model ./models/my-llama --target local --stack dev --yes

    Every format the engines load is planned on the target's GPUs (or this machine's RAM on
    target local) for the whole concurrency: GPU, tensor parallelism, engines, weights per GPU,
    $/hour, which GPUs run the format's fast kernel, the drift the quality gate expects of the
    format's family, and whether the artifact is on the hub or made by a recipe. The order of
    formats is data (qinfra/core/data/format_preferences.toml, with its sources).

    The stack file gets a comment on each block and the commands that come next; `qinfra plan
    --stack NAME` reads it as written. An existing file is never replaced without --force; on a
    terminal init asks before writing (--yes does not). Exit codes: 0 written (or declined
    with --json), 1 nothing fits or the model's facts cannot be read, 2 bad usage or an existing file.
    """
    from qinfra.core.spec import Target, stack_path, stacks_dir
    from qinfra.deploy.init_stack import (
        InitRequest,
        default_stack_name,
        plan_init,
        refuse_existing,
        write_stack_file,
    )

    folder = stacks_dir()
    name = stack or default_stack_name(model)
    if stack_path(name, folder).exists() and not force:
        raise SpecError(refuse_existing(stack_path(name, folder)))
    request = InitRequest(model=model, target=Target(target), stack=name,
                          engine=Engine(engine) if engine else None, revision=revision,
                          max_model_len=max_model_len, concurrency=concurrency, gpus=gpus,
                          cpu_memory_gib=cpu_memory_gib, store=store)
    result = plan_init(request, folder)
    rec = result.comparison.recommendation
    if not as_json:
        from qinfra.cli.compare_view import print_comparison
        from qinfra.cli.output import console

        print_comparison(console(), result.comparison)
    if rec is None:
        if as_json:
            _print_json(result, written=False)
        raise NoFitError(f"nothing to write for {model}: {result.comparison.why_none}. To fix: "
                         "lower --max-model-len or --concurrency, or allow larger GPUs with --gpus")
    if not yes and sys.stdin.isatty() and not click.confirm(
            f"Write {result.path}?", default=True, err=True):
        if as_json:
            _print_json(result, written=False)
            return
        raise Declined("nothing written")
    write_stack_file(result.path, result.text, force)
    if as_json:
        _print_json(result, written=True)
        return
    click.echo(f"\nwrote {result.path}")
    click.echo(f"next: qinfra plan --stack {result.name}   (the file lists the steps after it)")


def _print_json(result: object, written: bool) -> None:
    from qinfra.cli.compare_view import comparison_dict
    from qinfra.cli.views import stack_plan_dict
    from qinfra.deploy.init_stack import InitResult

    assert isinstance(result, InitResult)
    echo_json({
        "stack": result.name,
        "path": str(Path(result.path)),
        "written": written,
        "comparison": comparison_dict(result.comparison),
        "plan": stack_plan_dict(result.plan) if result.plan else None,
        "text": result.text or None,
    })
