"""``cortex cp`` and ``cortex fs``: files on nodes, moved through the hub's artifact store.

``cortex cp ./a.bin NODE:/data/`` uploads to the hub, then the node's `fs` skill pulls it;
``cortex cp NODE:/var/log/app.log ./`` has the node push it, then downloads it here. NODE
is a node id or name; the node only touches paths inside its ``--fs-root`` directories.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cortex.cli._common import client_config, out_console, print_json, run_async
from cortex.cli.artifacts import progress_bar
from cortex.errors import CortexError, InvalidArgument, NotFound, RemoteError
from cortex.sdk import Client, ClientConfig, Result

__all__ = ["fs_app", "register"]

fs_app = typer.Typer(help="Basic file operations on a node: ls, stat, rm.",
                     no_args_is_help=True)
_REMOTE = re.compile(r"^([^/:]+):(/.*)$")
_STAGING_TTL_S = 86400.0   # a transfer's artifact, if the client dies before deleting it

Target = Annotated[str, typer.Argument(metavar="NODE:/PATH", help="A node (id or name) "
                                       "and an absolute path on it.")]


def register(app: typer.Typer) -> None:
    app.command("cp")(copy)
    app.add_typer(fs_app, name="fs")


def copy(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(metavar="SRC", help="A local file or NODE:/PATH.")],
    dst: Annotated[str, typer.Argument(metavar="DST", help="A local path or NODE:/PATH "
                                       "(a directory keeps the file's name).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Copy one file to or from a node, with progress; verified by sha256."""
    remote_src, remote_dst = _REMOTE.match(src), _REMOTE.match(dst)
    if bool(remote_src) == bool(remote_dst):
        raise typer.BadParameter("exactly one of SRC and DST is NODE:/PATH "
                                 "(cortex cp ./f NODE:/data/ or cortex cp NODE:/f ./)")
    config = client_config(ctx)
    if remote_dst:
        local = Path(src)
        if not local.is_file():
            raise typer.BadParameter(f"{src}: not a readable local file", param_hint="SRC")
        out = run_async(_upload(config, local, local.stat().st_size, remote_dst[1],
                                remote_dst[2], quiet=quiet))
    elif remote_src:
        out = str(run_async(_download(config, remote_src[1], remote_src[2], Path(dst),
                                      Path(dst).is_dir(), quiet=quiet)))
    sys.stdout.write(f"{out}\n")


@fs_app.command("ls")
def fs_ls(ctx: typer.Context, target: Target,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
          ) -> None:
    """List a directory (or show a file) on a node."""
    entries = run_async(_fs(client_config(ctx), target, {"op": "ls"}))
    if as_json:
        print_json(entries)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("TYPE", "MODE", "SIZE", "NAME"):
        table.add_column(column, no_wrap=column != "NAME", overflow="fold")
    for e in entries:
        table.add_row(e["type"], e["mode"], str(e["size"]), e["name"])
    out_console.print(table)


@fs_app.command("stat")
def fs_stat(ctx: typer.Context, target: Target) -> None:
    """Show one path's type, size, mode and mtime as JSON."""
    print_json(run_async(_fs(client_config(ctx), target, {"op": "stat"}))[0])


@fs_app.command("rm")
def fs_rm(ctx: typer.Context, target: Target,
          recursive: Annotated[bool, typer.Option("--recursive", "-r",
                                                  help="Remove a directory tree.")] = False
          ) -> None:
    """Remove a file (or, with -r, a directory) on a node."""
    run_async(_fs(client_config(ctx), target, {"op": "rm", "recursive": recursive}))


async def _node_id(client: Client, node: str) -> str:
    nodes = await client.list_nodes()
    found = [n.id for n in nodes if node in (n.id, n.name)]
    if not found:
        raise NotFound(f"no node {node!r} (cortex nodes ls shows ids and names)")
    if len(found) > 1:
        raise InvalidArgument(f"{len(found)} nodes are named {node!r}: use the id "
                              f"({', '.join(found)})")
    return found[0]


async def _run_fs(client: Client, node: str, args: dict[str, Any]) -> Result:
    result = await client.run(skill="fs", args=args, node_id=await _node_id(client, node))
    if not result.ok:
        raise RemoteError(f"on node {node}: {result.task.reason or 'fs operation failed'}")
    return result


async def _fs(config: ClientConfig, target: str, args: dict[str, Any]
              ) -> list[dict[str, Any]]:
    remote = _REMOTE.match(target)
    if remote is None:
        raise InvalidArgument(f"{target!r}: give NODE:/absolute/path")
    async with Client(config) as client:
        result = await _run_fs(client, remote[1], {**args, "path": remote[2]})
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def _upload(config: ClientConfig, local: Path, size: int, node: str, path: str, *,
                  quiet: bool) -> str:
    async with Client(config) as client:
        node_id = await _node_id(client, node)
        with progress_bar(f"upload {local.name}", size, quiet=quiet) as progress:
            file = await client.upload_artifact(local, ttl_s=_STAGING_TTL_S,
                                                progress=progress)
        try:
            result = await _run_fs(client, node_id, {
                "op": "push", "path": path, "artifact_id": file.artifact_id,
                "name": local.name})
        finally:
            with contextlib.suppress(CortexError):
                await client.delete_artifact(file.artifact_id)
    return f"{node}:{json.loads(result.stdout.splitlines()[0])['path']}"


async def _download(config: ClientConfig, node: str, path: str, dest: Path,
                    dest_is_dir: bool, *, quiet: bool) -> Path:
    async with Client(config) as client:
        result = await _run_fs(client, node, {"op": "pull", "path": path})
        (file,) = result.files
        target = dest / Path(path).name if dest_is_dir else dest
        try:
            with progress_bar(file.name, file.size, quiet=quiet) as progress:
                return await client.download_artifact(file, target, progress=progress)
        finally:
            with contextlib.suppress(CortexError):
                await client.delete_artifact(file.artifact_id)
