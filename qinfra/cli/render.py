"""`qinfra render --stack NAME --out DIR`: the launch files a stack's target deploys, for review;
`--what scrape-config`: the Prometheus job that scrapes the stack's router, for the server the
analysis reads."""

from __future__ import annotations

from pathlib import Path

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json

LAUNCH = "launch"
SCRAPE_CONFIG = "scrape-config"


@click.command("render", cls=Command)
@click.option("--stack", required=True, metavar="NAME", help="Render stacks/Pulumi.<NAME>.yaml.")
@click.option(
    "--what",
    type=click.Choice([LAUNCH, SCRAPE_CONFIG]),
    default=LAUNCH,
    show_default=True,
    help="launch: what the target runs, one folder per variant; scrape-config: the Prometheus "
    "scrape job for the stack's router (prometheus/scrape-config.yml, or stdout without --out).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write <variant>/<file> into (created if missing); needed for launch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object listing the files.")
def render(stack: str, what: str, out: Path | None, as_json: bool) -> None:
    """Write what the stack's target runs: launch scripts (local), cloud-init user-data (aws)
    or manifests (kubernetes), one folder per variant; or, with --what scrape-config, the
    router's Prometheus scrape job (EC2 discovery on aws, pod discovery on kubernetes).

    Everything is rendered before anything is written, so a bad stack writes nothing. The same
    stack file gives byte-identical files.
    """
    from qinfra.core.spec import load_stack
    from qinfra.serving.render import write_rendered

    if what == LAUNCH and out is None:
        raise click.UsageError("--what launch needs --out DIR (the folder to write into)")
    spec = load_stack(stack)
    if what == SCRAPE_CONFIG:
        from qinfra.serving.scrape import render_scrape_config

        files = render_scrape_config(spec)
        if out is None and not as_json:
            click.echo("".join(files.values()), nl=False)
            return
    else:
        from qinfra.planning.stack import plan_for
        from qinfra.serving.render import render_stack

        files = render_stack(spec, plan_for(spec))
    written = write_rendered(files, out) if out is not None else []
    if as_json:
        doc = {
            "stack": stack,
            "target": spec.target.value,
            "what": what,
            "out": str(out) if out is not None else None,
            "files": [{"path": str(rel), "bytes": len(text.encode())} for rel, text in files.items()],
        }
        if out is None:  # nowhere written: the text travels in the JSON
            doc["files"] = [{"path": str(rel), "bytes": len(text.encode()), "text": text}
                            for rel, text in files.items()]
        echo_json(doc)
        return
    for path in written:
        click.echo(f"wrote {path}")
