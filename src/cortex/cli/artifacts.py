"""``cortex artifacts``: list, fetch (resumable, verified), upload and delete artifacts."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cortex.cli._common import ago, client_config, out_console, print_json, run_async, to_dict
from cortex.errors import InvalidArgument, NotFound
from cortex.sdk import Client, ClientConfig, parse_duration
from cortex.sdk._artifacts import File
from cortex.sdk._artifacts import Progress as ProgressCallback

__all__ = ["app", "progress_bar"]

app = typer.Typer(help="List, fetch, upload and delete artifacts (files stored on the hub).",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_err = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(what: str, total: int | None, *, quiet: bool
                 ) -> Iterator[ProgressCallback | None]:
    """A rich progress bar (bytes, rate, ETA) on stderr; yields the SDK's callback."""
    if quiet or not _err.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=_err,
                  transient=True) as progress:
        bar = progress.add_task(what, total=total)

        def update(done: int, total_now: int) -> None:
            progress.update(bar, completed=done, total=total or total_now or None)

        yield update


@app.command("ls")
def list_artifacts(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(
        metavar="[TASK_ID]", help="Only this task's artifacts.", show_default=False)] = "",
    as_json: JsonOption = False,
) -> None:
    """List artifacts (of one task, or every one of your tenant)."""
    files = run_async(_list(client_config(ctx), task_id))
    if as_json:
        print_json([to_dict(f) for f in files])
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "SIZE", "SHA256", "TASK", "CREATED", "EXPIRES"):
        table.add_column(column, no_wrap=column != "NAME", overflow="fold")
    for f in files:
        table.add_row(f.artifact_id, f.name, str(f.size), f.sha256[:12], f.task_id or "-",
                      ago(f.created_at, now=now), _expires(f.expires_at, now))
    out_console.print(table)


@app.command("get")
def get_artifacts(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(
        metavar="TASK_ID|ARTIFACT_ID", help="A task (t-...) or an artifact (a-...).")],
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="With a task: only these artifacts (default: all).",
        show_default=False)] = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="PATH", help="Directory (or file name, for one artifact) "
        "to write to.")] = Path("."),
    no_resume: Annotated[bool, typer.Option(
        "--no-resume", help="Start over instead of continuing a partial <file>.part.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download artifacts, verified by sha256; an interrupted download resumes."""
    paths = run_async(_get(client_config(ctx), ref, names or [], output, output.is_dir(),
                           resume=not no_resume, quiet=quiet))
    for p in paths:
        sys.stdout.write(f"{p}\n")


@app.command("put")
def put_artifact(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="FILE", help="The local file to upload.",
                                         exists=True, dir_okay=False, readable=True)],
    task: Annotated[str, typer.Option("--task", metavar="TASK_ID",
                                      help="Attach it to this task.")] = "",
    name: Annotated[str, typer.Option("--name", metavar="NAME",
                                      help="Its name (default: the file's).")] = "",
    ttl: Annotated[str | None, typer.Option(
        "--ttl", metavar="DURATION", help="Keep it this long (default: the hub's retention).",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Upload a file as an artifact (identical content is stored once)."""
    ttl_s = parse_duration(ttl, what="ttl") if ttl else 0.0
    file = run_async(_put(client_config(ctx), path, path.stat().st_size, task, name, ttl_s,
                          quiet=quiet))
    if as_json:
        print_json(to_dict(file))
    else:
        sys.stdout.write(f"{file.artifact_id}\n")


@app.command("stat")
def stat_artifact(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ARTIFACT_ID")],
) -> None:
    """Show one artifact's metadata as JSON."""
    print_json(to_dict(run_async(_stat(client_config(ctx), artifact_id))))


@app.command("rm")
def remove_artifacts(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(metavar="ARTIFACT_ID...")],
) -> None:
    """Delete artifacts; their content is freed by the next GC if nothing else uses it."""
    run_async(_rm(client_config(ctx), ids))


async def _list(config: ClientConfig, task_id: str) -> list[File]:
    async with Client(config) as client:
        return await client.list_artifacts(task_id)


async def _stat(config: ClientConfig, artifact_id: str) -> File:
    async with Client(config) as client:
        return await client.stat_artifact(artifact_id)


async def _rm(config: ClientConfig, ids: list[str]) -> None:
    async with Client(config) as client:
        for artifact_id in ids:
            await client.delete_artifact(artifact_id)


async def _put(config: ClientConfig, path: Path, size: int, task: str, name: str,
               ttl_s: float, *, quiet: bool) -> File:
    async with Client(config) as client:
        with progress_bar(f"upload {path.name}", size, quiet=quiet) as progress:
            return await client.upload_artifact(path, task_id=task, name=name, ttl_s=ttl_s,
                                                progress=progress)


async def _get(config: ClientConfig, ref: str, names: list[str], output: Path,
               output_is_dir: bool, *, resume: bool, quiet: bool) -> list[Path]:
    async with Client(config) as client:
        if ref.startswith("a-"):
            if names:
                raise InvalidArgument("NAME only goes with a task id; give the artifact id "
                                      "alone")
            files = [await client.stat_artifact(ref)]
        else:
            files = _select(await client.list_artifacts(ref), names, ref)
        if len(files) > 1 and not output_is_dir:
            raise InvalidArgument(f"{len(files)} artifacts to fetch: -o must be an existing "
                                  "directory")
        paths = []
        for f in files:
            with progress_bar(f.name, f.size, quiet=quiet) as progress:
                paths.append(await client.download_artifact(
                    f, output, progress=progress, resume=resume))
        return paths


def _select(files: list[File], names: list[str], task_id: str) -> list[File]:
    if not files:
        raise NotFound(f"task {task_id} has no artifacts (cortex run --artifact GLOB ...)")
    if not names:
        return files
    by_name = {f.name: f for f in files}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NotFound(f"task {task_id} has no artifact named {', '.join(missing)}; it has: "
                       f"{', '.join(sorted(by_name))}")
    return [by_name[n] for n in names]


def _expires(at: float, now: float) -> str:
    if not at:
        return "never"
    return f"in {ago(now - (at - now), now=now).removesuffix(' ago')}"
