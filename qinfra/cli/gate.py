"""`qinfra gate`: measure how far the quantized variant drifts from its baseline, keep the report
beside the artifact, and pin it in the stack file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json
from qinfra.core.formats import Format

if TYPE_CHECKING:
    from qinfra.quality.gate import GateResult

_QUANTIZED = [f.value for f in Format if f.value.startswith("gguf-") and f.value != "gguf-f16"]


@click.command("gate", cls=Command)
@click.option("--stack", metavar="NAME", help="Gate the pinned artifacts of stacks/Pulumi.<NAME>.yaml "
              "and pin the report there.")
@click.option("--baseline", metavar="PATH_OR_URI", help="Ad hoc: the 16-bit GGUF (a path or a "
              "pinned file:// artifact URI).")
@click.option("--quantized", metavar="PATH_OR_URI", help="Ad hoc: the quantized GGUF.")
@click.option("--format", "fmt", type=click.Choice(_QUANTIZED), help="Ad hoc: the quantized "
              "file's format (default: read from the GGUF).")
@click.option("--text", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluation text (default: the shipped 10 KB text).")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompts, one per line, each optionally followed by ' => ' and its accepted "
              "answers separated by ' | ' (default: the shipped set).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and figures as JSON.")
@click.pass_context
def gate(ctx: click.Context, stack: str | None, baseline: str | None, quantized: str | None,
         fmt: str | None, text: Path | None, prompts: Path | None, as_json: bool) -> None:
    """Quality gate: measure the quantized variant's drift from the baseline and judge it.

    GGUF variants are measured offline: llama-perplexity's KL divergence over an evaluation
    text (the baseline's logits are cached). Other formats are measured online: the same
    prompts at temperature 0 to both running variants. The thresholds are the shipped table's,
    overridden under qinfra:gate in the stack file.

    With --stack, the report is stored beside the quantized artifact and pinned as
    qinfra:variants.quantized.gate; `up` and `rollout` give the quantized variant traffic only
    with a passing report for the pinned artifacts. Exits 0 on pass, 1 on fail, 2 on bad usage.
    """
    if stack and (baseline or quantized or fmt):
        raise click.UsageError("give either --stack NAME or --baseline and --quantized, not both")
    if not stack and not (baseline and quantized):
        raise click.UsageError("give --stack NAME, or --baseline PATH_OR_URI --quantized PATH_OR_URI")
    diff = ""
    if stack:
        result, diff = _gate_stack(stack, text, prompts, quiet=as_json)
    else:
        from qinfra.artifacts.fetch import cache_dir
        from qinfra.quality.gate import run_gate

        assert baseline is not None and quantized is not None
        result = run_gate(baseline, quantized, store=None, cache=cache_dir(), text=text,
                          formats=(None, Format(fmt) if fmt else None), prompts=prompts)
    if as_json:
        echo_json({**result.to_json(), "diff": diff})
    else:
        for line in describe(result):
            click.echo(line)
        if diff:
            click.echo(diff.rstrip("\n"))
    if result.report.verdict.value != "pass":
        ctx.exit(1)


def _gate_stack(stack: str, text: Path | None, prompts: Path | None,
                quiet: bool = False) -> tuple[GateResult, str]:
    from qinfra.cli.terminal import TerminalEvents
    from qinfra.deploy.gate_run import gate_stack
    from qinfra.deploy.operations import Stack

    return gate_stack(Stack.open(stack, TerminalEvents(as_json=quiet)), text, prompts)


def describe(result: GateResult) -> list[str]:
    """The human view: verdict and figures on one line, then each reason and the report URI."""
    r = result.report
    m = r.metrics
    if r.method.value == "kld":
        figures = (f"mean KLD {m['mean_kld']:.4f} ± {m['mean_kld_err']:.4f}, same top "
                   f"{m['same_top_p']:.1%}, PPL ratio {m['ppl_ratio']:.3f}, RMS Δp {m['rms_dp']:.1%}")
    else:
        figures = (f"exact match {m['exact_match']:.0%}, common prefix {m['prefix_fraction']:.0%}, "
                   f"similarity {m['similarity']:.0%} over {m['prompts']} prompts")
    lines = [f"{r.verdict.value.upper()}: {r.quantized.format} vs {r.baseline.format} "
             f"({r.method.value}): {figures}"]
    if answers := m.get("answers"):
        from qinfra.quality.gate_answers import summary

        lines.append(f"  answers: {summary(answers)}")
    lines += [f"  fails: {reason}" for reason in r.reasons]
    lines.append(f"report: {result.report_uri}")
    return lines
