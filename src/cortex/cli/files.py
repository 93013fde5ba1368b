"""``cortex cp`` and ``cortex fs``: files on nodes, moved through the hub's artifact store.

``cortex cp ./a.bin NODE:/data/`` uploads to the hub, then the node's `fs` skill pulls it;
``cortex cp NODE:/var/log/app.log ./`` has the node push it, then downloads it here. NODE
is a node id or name; the node only touches paths inside its ``--fs-root`` directories.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cortex.cli._common import client_config, out_console, print_json, run_async
from cortex.cli.artifacts import progress_bar
from cortex.errors import InvalidArgument
from cortex.sdk import Client, ClientConfig

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


async def _fs(config: ClientConfig, target: str, args: dict[str, Any]
              ) -> list[dict[str, Any]]:
    remote = _REMOTE.match(target)
    if remote is None:
        raise InvalidArgument(f"{target!r}: give NODE:/absolute/path")
    node, path = remote[1], remote[2]
    async with Client(config) as client:
        if args["op"] == "ls":
            return await client.list_dir(node, path)
        if args["op"] == "stat":
            return [await client.stat_path(node, path)]
        await client.remove_path(node, path, recursive=bool(args.get("recursive")))
        return []


async def _upload(config: ClientConfig, local: Path, size: int, node: str, path: str, *,
                  quiet: bool) -> str:
    async with Client(config) as client:
        with progress_bar(f"upload {local.name}", size, quiet=quiet) as progress:
            written = await client.copy_to_node(local, node, path, progress=progress)
    return f"{node}:{written}"


async def _download(config: ClientConfig, node: str, path: str, dest: Path,
                    dest_is_dir: bool, *, quiet: bool) -> Path:
    target = dest / Path(path).name if dest_is_dir else dest
    async with Client(config) as client:
        with progress_bar(Path(path).name, None, quiet=quiet) as progress:
            return await client.copy_from_node(node, path, target, progress=progress)
