"""`qinfra render --stack NAME --out DIR`: the launch files a stack's target deploys, for review."""

from __future__ import annotations

from pathlib import Path

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json


@click.command("render", cls=Command)
@click.option("--stack", required=True, metavar="NAME", help="Render stacks/Pulumi.<NAME>.yaml.")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write <variant>/<file> into (created if missing).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object listing the files.")
def render(stack: str, out: Path, as_json: bool) -> None:
    """Write what the stack's target runs: launch scripts (local), cloud-init user-data (aws)
    or manifests (kubernetes), one folder per variant.

    Everything is rendered before anything is written, so a bad stack writes nothing. The same
    stack file gives byte-identical files.
    """
    from qinfra.core.spec import load_stack
    from qinfra.planning.stack import plan_for
    from qinfra.serving.render import render_stack, write_rendered

    spec = load_stack(stack)
    plan = plan_for(spec)
    files = render_stack(spec, plan)
    written = write_rendered(files, out)
    if as_json:
        doc = {
            "stack": stack,
            "target": spec.target.value,
            "out": str(out),
            "files": [{"path": str(rel), "bytes": len(text.encode())} for rel, text in files.items()],
        }
        echo_json(doc)
        return
    for path in written:
        click.echo(f"wrote {path}")
