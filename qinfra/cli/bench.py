"""`qinfra bench` and `qinfra bench compare`: parse, call qinfra.quality, print."""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from qinfra.cli.command import Group
from qinfra.cli.output import echo_json
from qinfra.core.errors import SpecError
from qinfra.core.paths import project_root

API_KEY_ENV = "QINFRA_API_KEY"
_SHOWN = ("request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
          "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
          "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms")


def _rate(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        rate = math.inf if text.strip().lower() in {"inf", "infinity"} else float(text)
    except ValueError:
        rate = -1.0
    if rate <= 0:
        raise SpecError(f"--rate {text!r} is not a request rate. To fix: requests per second "
                        "above 0, or inf to send every request at once")
    return rate


@click.group(cls=Group, invoke_without_command=True)
@click.option("--stack", metavar="NAME", help="The stack: stacks/Pulumi.<NAME>.yaml.")
@click.option("--target", default="router", show_default=True, metavar="router|baseline|quantized|URL",
              help="The stack's front door, one variant's engines, or any OpenAI-compatible URL.")
@click.option("--requests", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Requests per run (per level with --sweep).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Closed loop: requests in flight [default 1]; with --rate, a cap on them.")
@click.option("--rate", "rate_text", metavar="R", default=None,
              help="Open loop: requests per second, sent on schedule whatever the responses "
                   "do; inf sends all at once.")
@click.option("--arrival", type=click.Choice(["poisson", "constant"]), default="poisson",
              show_default=True, help="Gaps between open-loop arrivals.")
@click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Gamma shape of the gaps: 1 Poisson, below 1 burstier.")
@click.option("--sweep", is_flag=True, help="Closed loop from 1 in flight, doubling until "
                                            "throughput stops rising.")
@click.option("--input-tokens", default="256", show_default=True, metavar="DIST",
              help="Prompt length: N, uniform:LOW-HIGH or normal:MEAN,SD.")
@click.option("--output-tokens", default="128", show_default=True, metavar="DIST",
              help="Output length (max_tokens with ignore_eos), same forms.")
@click.option("--dataset", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSONL of prompts ({\"prompt\": ...}) or chats ({\"messages\": [...]}).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed, same prompts, same arrival times.")
@click.option("--slo", default=None, metavar="ttft=200ms,tpot=50ms",
              help="Limits a request must meet to count towards goodput.")
@click.option("--model", default=None, help="Model name to ask a URL target for "
                                            "[default: its first /v1/models entry].")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON for scripts.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the result here [always kept under .qinfra/bench/].")
@click.pass_context
def bench(ctx: click.Context, **options: Any) -> None:
    """Latency and throughput of a stack or any OpenAI-compatible URL, as `vllm bench serve`
    measures them.

    Per request: time to first token, time per output token, inter-token latencies, end-to-end
    latency, tokens in and out. The client measures its own overhead and says when it, not the
    server, limited the run. The API key, where the engines need one, is read from
    $QINFRA_API_KEY. `qinfra bench compare A.json B.json` tells two runs apart.
    """
    if ctx.invoked_subcommand is not None:
        return
    _run(**options)


def _run(stack: str | None, target: str, n: int, concurrency: int | None, rate_text: str | None,
         arrival: str, burstiness: float, sweep: bool, input_tokens: str, output_tokens: str,
         dataset: Path | None, seed: int, slo: str | None, model: str | None, as_json: bool,
         out: Path | None) -> None:
    from qinfra.quality import bench_runner as runner
    from qinfra.quality.bench_stats import parse_slo
    from qinfra.quality.bench_workload import Arrival, from_jsonl, parse_distribution, synthetic

    rate = _rate(rate_text)
    limits = parse_slo(slo) if slo else None
    if sweep and rate is not None:
        raise click.UsageError("--sweep runs closed-loop levels; leave out --rate")
    outs = parse_distribution("--output-tokens", output_tokens)
    requests = (from_jsonl(dataset, n, outs, seed) if dataset else
                synthetic(n, parse_distribution("--input-tokens", input_tokens), outs, seed))
    where = _resolve(stack, target, model)
    load = runner.Load(rate=rate, concurrency=concurrency if rate is not None else concurrency or 1,
                       arrival=Arrival(arrival), burstiness=burstiness)
    labels = (("target", target), ("variant", where.variant), ("stack", stack),
              ("input_tokens", "dataset" if dataset else input_tokens),
              ("output_tokens", output_tokens))
    run = runner.BenchRun(where.target, tuple(requests), load, seed, limits, labels)
    folder = runner.results_dir(project_root() or Path.cwd().resolve())
    if sweep:
        _sweep(run, where, folder, as_json, out)
        return
    with _progress(len(requests), as_json, load.describe()) as advance:
        result = runner.run(run, on_done=advance)
    _add_cost(result, where.usd_per_hour)
    path = runner.save(result, folder, where.label)
    if out:
        runner.save_to(result, out)
    if as_json:
        echo_json(result)
        return
    _print_result(result, path)


@dataclass(frozen=True)
class _Where:
    """A resolved --target: the URL and model to ask, what to call it, what it costs."""

    target: Any  # qinfra.quality.bench_client.Target
    label: str
    variant: str | None
    usd_per_hour: float | None


def _resolve(stack: str | None, target: str, model: str | None) -> _Where:
    """--target as a URL and model: a URL as given; router/baseline/quantized from the stack's
    outputs (`endpoint`, `variants[v].endpoint`)."""
    from qinfra.quality.bench_client import Target

    key = os.environ.get(API_KEY_ENV) or None
    if target.startswith(("http://", "https://")):
        usd = _usd_per_hour(stack, None) if stack else None
        return _Where(Target(target, model or _ask_model(target, key), key),
                      f"{stack}-url" if stack else "url", None, usd)
    names = ("router", "baseline", "quantized")
    if target not in names:
        from qinfra.core.errors import suggest

        raise SpecError(f"--target {target!r} is not a target. To fix: one of {', '.join(names)} "
                        f"or an http(s):// URL.{suggest(target, names)}")
    if not stack:
        raise click.UsageError(f"--target {target} reads the stack's outputs: pass --stack NAME "
                               "(or give --target a URL)")
    from qinfra.cli.terminal import open_stack
    from qinfra.core.spec import Variant
    from qinfra.quality.bench_workload import BenchError

    spec = (handle := open_stack(stack, check=False)).spec
    outputs = handle.deployer.outputs()
    variant = None if target == "router" else Variant(target)
    url = (outputs.get("endpoint") if variant is None
           else ((outputs.get("variants") or {}).get(variant.value) or {}).get("endpoint"))
    if not url or not str(url).startswith("http"):
        what = "a front door (`endpoint`)" if variant is None else f"an endpoint for {variant}"
        raise BenchError(f"stack {stack} has no {what} in its outputs. To fix: `qinfra up "
                         f"--stack {stack}`, or pick another --target (see `qinfra status "
                         f"--stack {stack}`)")
    return _Where(Target(str(url), model or spec.model.served_name, key), f"{stack}-{target}",
                  variant.value if variant else None, _usd_per_hour(stack, variant))


def _ask_model(url: str, key: str | None) -> str:
    import asyncio

    import aiohttp

    from qinfra.quality.bench_client import served_model
    from qinfra.quality.bench_workload import BenchError

    async def ask() -> str:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            return await served_model(session, url, key)

    try:
        return asyncio.run(ask())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BenchError(f"{url}/v1/models did not answer ({exc}). To fix: check the URL, or "
                         "name the model with --model") from exc


def _usd_per_hour(stack: str | None, variant: Any) -> float | None:
    """The plan's hourly cost of the stack (router) or of one variant's fleet."""
    from qinfra.core.errors import QinfraError

    try:
        from qinfra.core.spec import load_stack
        from qinfra.planning.stack import plan_for

        plan = plan_for(load_stack(stack or ""))
    except QinfraError:
        return None
    if variant is None:
        return plan.usd_per_hour
    chosen = plan.variant(variant).chosen
    return chosen.usd_per_hour if chosen else None


def _add_cost(result: dict[str, Any], usd_per_hour: float | None) -> None:
    from qinfra.quality.bench_stats import usd_per_million_output_tokens

    result["usd_per_hour"] = usd_per_hour
    result["usd_per_million_output_tokens"] = usd_per_million_output_tokens(
        usd_per_hour, result["output_throughput"])


def _progress(total: int, quiet: bool, title: str) -> AbstractContextManager[Any]:
    """A rich progress bar on stderr, advanced once per finished request."""
    if quiet:
        return nullcontext(lambda _result: None)
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    @contextmanager
    def bar() -> Any:
        from rich.console import Console

        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                      transient=True) as progress:
            task = progress.add_task(title, total=total)
            yield lambda _result: progress.advance(task)

    return bar()


def _sweep(run: Any, where: _Where, folder: Path, as_json: bool, out: Path | None) -> None:
    from qinfra.quality import bench_runner as runner

    def level_done(concurrency: int, level: dict[str, Any]) -> None:
        _add_cost(level, where.usd_per_hour)
        runner.save(level, folder, f"{where.label}-c{concurrency}")
        if not as_json:
            click.echo(f"concurrency {concurrency}: {runner.summary_line(level)}", err=True)

    levels = runner.sweep(run, on_level=level_done)
    best = runner.knee(levels)
    document = {"sweep": [{k: v for k, v in lv.items() if not isinstance(v, list)} for lv in levels],
                "saturation_concurrency": best["max_concurrency"]}
    if out:
        runner.save_to(document, out)
    if as_json:
        echo_json(document)
        return
    _print_table([(f"c={lv['max_concurrency']}", lv) for lv in levels], "sweep")
    click.echo(f"throughput peaks at concurrency {best['max_concurrency']} "
               f"({best['output_throughput']:.1f} output tokens/s)")


def _print_table(columns: list[tuple[str, dict[str, Any]]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for key in ("completed", "failed", *_SHOWN):
        table.add_row(key, *(_cell(result.get(key)) for _, result in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "-" if value is None else str(value)


def _print_result(result: dict[str, Any], path: Path) -> None:
    _print_table([("value", result)], f"{result['model_id']} at {result['base_url']}: {result['load']}")
    if result.get("goodput"):
        g = result["goodput"]
        click.echo(f"goodput: {g['requests_per_s']:.2f} req/s ({g['fraction']:.0%} of requests "
                   f"met {g['slo']})")
    if result.get("usd_per_million_output_tokens") is not None:
        click.echo(f"cost: ${result['usd_per_million_output_tokens']:,.2f} per million output tokens")
    client = result["client"]
    click.echo(f"client: {client['overhead_ms_per_request']:.3f} ms of its own per request, "
               f"{client['cpu_fraction']:.0%} of a core")
    if client["limited"]:
        click.secho(f"warning: the client, not the server, limited this run: {client['why']}",
                    fg="yellow", err=True)
    for error in sorted({e for e in result["errors"] if e})[:3]:
        click.secho(f"failed: {error}", fg="red", err=True)
    click.echo(f"saved {path}")


@bench.command("compare")
@click.argument("a", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("b", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def compare(a: Path, b: Path, as_json: bool) -> None:
    """Each latency metric of run B against run A: the difference of means with a bootstrap
    95% confidence interval over the requests, and a verdict (faster, slower, no significant
    difference)."""
    from qinfra.quality import bench_compare
    from qinfra.quality.bench_runner import load

    rows = bench_compare.compare(load(a), load(b))
    if as_json:
        echo_json(bench_compare.to_json(str(a), str(b), rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"B {b.name} against A {a.name} (95% bootstrap CI)", title_justify="left")
    for col in ("metric", "A mean ms", "B mean ms", "B - A ms", "95% CI", "verdict"):
        table.add_column(col, justify="left" if col in {"metric", "verdict"} else "right")
    for r in rows:
        colour = {"faster": "green", "slower": "red"}.get(r.verdict.value, "dim")
        table.add_row(r.metric, f"{r.a_mean_ms:.3f}", f"{r.b_mean_ms:.3f}", f"{r.difference_ms:+.3f}",
                      f"{r.ci_low_ms:+.3f} to {r.ci_high_ms:+.3f}", f"[{colour}]{r.verdict}[/]")
    Console().print(table)
    for r in rows:
        click.echo(bench_compare.describe(r))
