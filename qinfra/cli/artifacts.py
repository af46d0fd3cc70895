"""`qinfra artifacts push | verify | ls`: content-addressed weight artifacts on the command line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from qinfra.artifacts.progress import UNKNOWN
from qinfra.cli.command import Group
from qinfra.cli.output import echo_json
from qinfra.core.errors import ArtifactError
from qinfra.core.formats import Format

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

    from qinfra.artifacts.progress import Progress, ProgressFn
    from qinfra.artifacts.push import PushResult


@click.group("artifacts", cls=Group)
def artifacts() -> None:
    """Push, verify and list the weight artifacts a stack deploys."""


@artifacts.command("push")
@click.argument("src", required=False)
@click.option(
    "--stack",
    metavar="NAME",
    help="Push both variants of stacks/Pulumi.<NAME>.yaml and pin their URIs in that file.",
)
@click.option(
    "--to",
    "store",
    metavar="STORE_URI",
    help="Store for an ad-hoc push of SRC: s3://bucket[/prefix] or file:///abs/path.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in Format]),
    help="Weight format of SRC; for a hub id it picks which files are fetched.",
)
@click.option("--revision", help="Hub revision of SRC (branch, tag or commit).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON; no progress bars.")
def push(
    src: str | None,
    stack: str | None,
    store: str | None,
    fmt: str | None,
    revision: str | None,
    as_json: bool,
) -> None:
    """Push SRC to STORE_URI, or both variants of a stack.

    SRC is a hub id (owner/name), a local directory, or a single .gguf file. A stack variant
    with a `recipe` is made first (gguf, llm-compressor, dequantize: cached, recorded in the
    manifest with its tools' versions; `qinfra artifacts verify` prints the record).

    Only objects the store lacks are uploaded; the artifact's URI names the sha256 of its
    manifest, so pushing the same content again prints the same URI.
    """
    from qinfra.artifacts import push as art
    from qinfra.artifacts.fetch import fetch

    if stack and (src or store):
        raise click.UsageError("give either --stack NAME or SRC --to STORE_URI, not both")
    if not stack and not (src and store):
        raise click.UsageError("give --stack NAME, or SRC --to STORE_URI")
    if stack:
        from qinfra.core.spec import load_stack
        from qinfra.deploy.stackfile import update_stack_file

        spec = load_stack(stack)
        assert spec.path is not None  # load_stack always records where it read the spec
        from qinfra.artifacts import router_wheels

        with progress_bars(quiet=as_json) as progress:
            results = art.push_stack(spec, progress=progress)
            router = (router_wheels.push_router(spec, progress=progress)
                      if router_wheels.wanted(spec) else None)
        diff = update_stack_file(spec.path, {**art.pins(results), **router_wheels.pins(router)})
        if as_json:
            variants = {name: r.to_json() for name, r in results.items()}
            echo_json({"stack": stack, "variants": variants, "diff": diff,
                       **({"router": router.to_json()} if router else {})})
            return
        for name, result in results.items():
            click.echo(_summary(name, result))
        if router:
            click.echo(_summary("router", router))
        click.echo(diff.rstrip("\n") if diff else f"{spec.path} already pins these artifacts")
        return
    from qinfra.artifacts.fetch import project_hash_cache
    from qinfra.artifacts.hashing import Hasher
    from qinfra.artifacts.store_open import open_store

    assert src is not None and store is not None
    with progress_bars(quiet=as_json) as progress:
        fetched = fetch(
            src, fmt=Format(fmt) if fmt else None, revision=revision, progress=progress
        )
        hasher = Hasher(cache=project_hash_cache())
        result = art.push(fetched, open_store(store, cache=hasher.cache), hasher=hasher,
                          progress=progress)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(_summary(src, result))


@artifacts.command("verify")
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON; no progress.")
def verify(uri: str, as_json: bool) -> None:
    """Re-hash every object of the artifact at URI against its manifest.

    Exits 0 when intact, 1 naming each missing or altered file otherwise.
    """
    from qinfra.artifacts.verify import verify as verify_artifact

    with progress_bars(quiet=as_json) as progress:
        report = verify_artifact(uri, progress=progress)
    if as_json:
        echo_json(report.to_json())
        if not report.ok:
            raise click.exceptions.Exit(ArtifactError.exit_code)
        return
    if not report.ok:
        lines = "\n".join(f"  {c.path}: {c.problem}" for c in report.bad)
        raise ArtifactError(
            f"{report.uri} failed verification ({len(report.bad)} of {len(report.checks)} "
            f"files):\n"
            f"{lines}\nTo fix: push the artifact again from its source"
        )
    click.echo(f"{report.uri}: intact ({len(report.checks)} files checked)")
    for line in report.recipe.lines() if report.recipe else ():
        click.echo(line)


@artifacts.command("ls")
@click.option("--stack", metavar="NAME", required=True, help="List the store of this stack.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls(stack: str, as_json: bool) -> None:
    """List the artifacts in a stack's store and which variant pins each."""
    from qinfra.artifacts.listing import list_artifacts
    from qinfra.core.spec import load_stack

    spec = load_stack(stack)
    listings = list_artifacts(spec)
    if as_json:
        echo_json([item.to_json() for item in listings])
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    store = spec.artifacts.store.rstrip("/")
    table = Table(title=f"artifacts in {store}", title_justify="left")
    table.add_column("artifact", overflow="fold")  # a URI or id is copied whole, never cut
    for column in ("state", "files", "size", "pinned by", "recipe"):
        table.add_column(column)
    for item in listings:
        recipe = item.recipe
        table.add_row(
            item.artifact_id if item.uri.startswith(f"{store}/") else item.uri,
            item.state.value,
            "" if item.file_count is None else str(item.file_count),
            "" if item.size_bytes is None else decimal(item.size_bytes),
            ", ".join(item.pinned_by),
            recipe.summary if recipe else "",
        )
    Console().print(table)


def _summary(name: str, result: PushResult) -> str:
    from rich.filesize import decimal

    files = result.manifest.files
    return (
        f"{name}: {result.uri}  {len(files)} file{'s' * (len(files) != 1)}, "
        f"{decimal(result.manifest.size_bytes)}, {decimal(result.uploaded_bytes)} uploaded"
    )


class _RichProgress:
    """Progress bars on stderr with bytes and throughput, one per step."""

    visible = True

    def __init__(self, bars: RichProgress) -> None:
        self._bars = bars

    def start(self, description: str, total_bytes: int) -> ProgressFn:
        if total_bytes == UNKNOWN:  # a tool run: a pulse until it reports it is done
            task = self._bars.add_task(description, total=None)
            return lambda _: self._bars.update(task, total=1, completed=1)
        task = self._bars.add_task(description, total=total_bytes)

        def advance(n: int) -> None:
            self._bars.advance(task, n)

        return advance


@contextlib.contextmanager
def progress_bars(quiet: bool) -> Iterator[Progress]:
    from qinfra.artifacts.progress import NO_PROGRESS

    if quiet:
        yield NO_PROGRESS
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bars:
        yield _RichProgress(bars)
