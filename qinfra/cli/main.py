"""The `qinfra` entry point: the root help page from plain data, every other command through click.

`qinfra`, `qinfra -h` and `qinfra --help` print the root page without importing click or any
command (qinfra.cli.helptext lays it out as click does; tests/test_cli_startup.py compares the two
byte for byte and checks each summary below against its command's help). Everything else goes to
the click group in qinfra.cli.root, which imports a command's module only when it runs.
"""

from __future__ import annotations

import os
import sys

# typing.TYPE_CHECKING without importing typing (type checkers take any TYPE_CHECKING as true):
# they see `cli` here, while at run time __getattr__ below imports it on first use.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from qinfra.cli.root import cli as cli


class LazyCommand:
    """Where a command lives, and the first paragraph of its help for the root's listing (a
    plain class: NamedTuple or dataclasses would import typing for every `qinfra --help`)."""

    __slots__ = ("attr", "module", "summary")

    def __init__(self, module: str, attr: str, summary: str) -> None:
        self.module = module
        self.attr = attr
        self.summary = summary

    def __repr__(self) -> str:
        return f"LazyCommand({self.module!r}, {self.attr!r})"


ROOT_HELP = """Deploy an LLM as a 16-bit baseline and a quantized variant, sized by a GPU-memory planner.

The stack file stacks/Pulumi.<stack>.yaml is the single source of truth; `qinfra plan`
shows what it costs in GPUs and money before anything is provisioned."""

DEBUG_HELP = "Show tracebacks for unexpected errors."

# The root's options as click lists them (--version and --help carry click's own wording).
ROOT_OPTIONS = [("--version", "Show the version and exit."), ("--debug", DEBUG_HELP),
                ("-h, --help", "Show this message and exit.")]

_STACK = "qinfra.cli.stack"
_OBSERVE = "qinfra.cli.observe"

# Every command, imported when named. A summary is the first paragraph of the command's help, as
# `qinfra --help` shortens it; tests/test_cli_startup.py fails when one drifts from its command.
COMMANDS: dict[str, LazyCommand] = {
    "analysis": LazyCommand("qinfra.cli.analysis", "analysis", "The analysis windows of "
                            "`rollout --auto`, oldest first, with each check's verdict."),
    "artifacts": LazyCommand("qinfra.cli.artifacts", "artifacts",
                             "Push, verify and list the weight artifacts a stack deploys."),
    "bench": LazyCommand("qinfra.cli.bench", "bench", "Latency and throughput of a stack or any "
                         "OpenAI-compatible URL, as `vllm bench serve` measures them."),
    "destroy": LazyCommand(_STACK, "destroy", "Stop and delete everything the stack runs; "
                                              "artifacts in the store are kept."),
    "gate": LazyCommand("qinfra.cli.gate", "gate", "Quality gate: measure the quantized variant's "
                        "drift from the baseline and judge it."),
    "history": LazyCommand(_OBSERVE, "history", "Every update of the stack, newest first and "
                                                "paged, with its number, result, stage, traffic "
                                                "and artifact URIs; failed updates included."),
    "init": LazyCommand("qinfra.cli.init", "init", "Compare formats for a model, recommend a "
                        "baseline and a quantized variant, write the stack."),
    "plan": LazyCommand("qinfra.cli.plan", "plan", "Memory plan: GPUs, tensor parallelism, "
                                                   "replicas, engine flags and cost."),
    "preview": LazyCommand(_STACK, "preview", "Show what `up` would change: per resource, then "
                                              "GPUs, memory and cost before -> after."),
    "render": LazyCommand("qinfra.cli.render", "render", "Write what the stack's target runs: launch "
                          "scripts (local), cloud-init user-data (aws) or manifests (kubernetes), "
                          "one folder per variant; or, with --what scrape-config, the router's "
                          "Prometheus scrape job (EC2 discovery on aws, pod discovery on "
                          "kubernetes)."),
    "rollback": LazyCommand(_STACK, "rollback", "Send all traffic back to the baseline: rewrite the "
                                                "stack file, preview, apply."),
    "rollout": LazyCommand(_STACK, "rollout", "Move the quantized variant's traffic share: rewrite "
                                              "the stack file, preview, apply."),
    "status": LazyCommand(_OBSERVE, "status", "The stack's outputs: stage, and per variant its "
                                              "traffic, replicas and endpoint; on target local "
                                              "also each engine's memory, planned against what "
                                              "it allocated."),
    "up": LazyCommand(_STACK, "up", "Push and pin missing artifacts, preview, apply, wait until "
                                    "every server is healthy."),
}



def root_help(prog: str, width: int) -> str:
    """The root help page exactly as click renders the group's (without its trailing newline)."""
    from qinfra.cli.helptext import group_help

    commands = {name: lazy.summary for name, lazy in COMMANDS.items()}
    return group_help(prog, ROOT_HELP, ROOT_OPTIONS, commands, width)


def _completing() -> bool:
    """Whether a shell is asking click for completions (`_<PROG>_COMPLETE` is set)."""
    return any(key.startswith("_") and key.endswith("_COMPLETE") for key in os.environ)


def _print_root_help(args: list[str]) -> None:
    """Print the root page as click would and exit: on stdout with 0 for -h/--help, on stderr
    with 2 (a usage error) when no arguments were given."""
    from qinfra.cli.helptext import help_width, program_name

    stream = sys.stdout if args else sys.stderr
    try:
        stream.write(root_help(program_name(), help_width()) + "\n")
        stream.flush()
    except BrokenPipeError:  # `qinfra --help | head`: click exits 1 quietly too
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- keeps interpreter shutdown quiet
        sys.exit(1)
    sys.exit(0 if args else 2)


def __getattr__(name: str) -> object:
    """`cli`, the click group, imported from qinfra.cli.root on first use (PEP 562)."""
    if name == "cli":
        from qinfra.cli.root import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The console script: the root page printed here (no click import), the rest by click."""
    args = sys.argv[1:]
    if args in ([], ["--help"], ["-h"]) and not _completing():
        _print_root_help(args)
    from qinfra.cli.root import cli

    cli()


if __name__ == "__main__":
    main()
