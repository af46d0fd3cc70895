"""Start-up stays light: `qinfra --help` and an ad-hoc plan import only what they use, the root
help page printed without click is click's own byte for byte, and the lazy root group lists every
command exactly as the command itself describes it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

from qinfra.cli.command import Context
from qinfra.cli.main import COMMANDS, cli, root_help
from qinfra.cli.plan import FORMATS, GPUS
from qinfra.core.formats import Format
from qinfra.core.hardware import catalog

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("huggingface_hub", "boto3", "botocore", "pulumi", "rich", "jinja2", "pydantic", "numpy",
         "gguf")


def _imported_heavy(argv: list[str]) -> list[str]:
    """The HEAVY packages a fresh interpreter holds after running `qinfra argv`."""
    code = ("import sys\nfrom qinfra.cli.main import cli\n"
            f"try:\n    cli({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    return ast.literal_eval(out.stdout.split("HEAVY", 1)[1].strip())


@pytest.mark.parametrize(
    "argv",
    [
        # the root listing imports no command module at all
        ["--help"],
        # the ad-hoc planner on the shipped demo model: no schema, no hub, no GGUF writer
        ["plan", "--model", "qinfra-demo", "--format", "gguf-q4_k_m", "--cpu-memory-gib", "8",
         "--json"],
        # a local model directory, planned for a catalog GPU
        ["plan", "--model", "tests/data/models/llama-3.1-8b", "--format", "awq", "--gpu", "l4",
         "--json"],
    ],
)
def test_light_commands_import_no_heavy_package(argv: list[str]) -> None:
    assert _imported_heavy(argv) == []


def test_root_help_imports_no_command_module() -> None:
    code = ("import sys\nfrom qinfra.cli.main import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('CLI', sorted(m for m in sys.modules if m.startswith('qinfra.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ("CLI ['qinfra.cli.command', 'qinfra.cli.helptext', 'qinfra.cli.main', 'qinfra.cli.root']"
            in out.stdout)


def _run_entry(argv: list[str], through_click: bool, columns: str) -> subprocess.CompletedProcess[str]:
    """`qinfra argv` in a fresh interpreter, via the entry point or straight through click's group,
    with the program named `qinfra` either way; reports whether click was imported."""
    call = ("from qinfra.cli.root import cli\n    cli()" if through_click
            else "from qinfra.cli.main import main\n    main()")
    code = (f"import sys\nsys.argv = ['qinfra', *{argv!r}]\ntry:\n    {call}\nfinally:\n"
            "    print('CLICK', 'click' in sys.modules, file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"COLUMNS": columns, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("columns", ["40", "67", "200"])  # clamped to 50, as is, clamped to 80
@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_entry_point_prints_clicks_root_help_without_click(argv: list[str], columns: str) -> None:
    fast = _run_entry(argv, through_click=False, columns=columns)
    slow = _run_entry(argv, through_click=True, columns=columns)
    assert fast.stderr.endswith("CLICK False\n") and slow.stderr.endswith("CLICK True\n")
    # same bytes on the same stream (stderr for a bare `qinfra`), same exit code (0, or 2)
    assert (fast.returncode, fast.stdout, fast.stderr[:-11]) == (
        slow.returncode, slow.stdout, slow.stderr[:-10])
    assert fast.returncode == (0 if argv else 2)
    assert "Commands:" in (fast.stdout if argv else fast.stderr)


@pytest.mark.parametrize("prog", ["qinfra", "python -m qinfra",
                                  "a-very-long-program-name-that-pushes-the-usage-line-aside"])
def test_root_help_matches_click_at_every_width(prog: str) -> None:
    # widths beyond what help_width() yields (50..78) too, so the layout rules are all exercised
    for width in range(30, 121):
        ctx = Context(cli, info_name=prog, terminal_width=width, **cli.context_settings)
        assert root_help(prog, width) == cli.get_help(ctx), width


def test_entry_point_defers_to_click_for_anything_else() -> None:
    # --version and shell completion are click's; so is any command, even with --help
    for argv in (["--version"], ["plan", "--help"]):
        assert _run_entry(argv, through_click=False, columns="80").stderr.endswith("CLICK True\n")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_summary_is_its_commands_first_paragraph(name: str) -> None:
    lazy = COMMANDS[name]
    command = getattr(importlib.import_module(lazy.module), lazy.attr)
    assert isinstance(command, click.Command)
    assert command.help is not None
    assert lazy.summary.split() == command.help.partition("\n\n")[0].split()


def test_root_help_lists_every_command_once() -> None:
    ctx = click.Context(cli, info_name="qinfra")
    listed = [line.split()[0] for line in cli.get_help(ctx).split("Commands:")[1].splitlines()
              if line.strip()]
    assert listed == sorted(COMMANDS)


def test_plan_choices_match_the_tables() -> None:
    # the --format and --gpu choices are spelled out so `plan --help` loads no table
    assert tuple(f.value for f in Format) == FORMATS
    assert set(GPUS) <= set(catalog().gpus)
