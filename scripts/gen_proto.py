"""Regenerate src/cortex/_proto from proto/ (python, grpc and .pyi stubs).

protoc names modules after the proto path (``cortex.v1``); the generated imports are
rewritten to live under ``cortex._proto`` so the contract has one home in the package.
Run with ``--check`` to fail when the committed code is stale.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "cortex" / "_proto"
BIN = Path(sys.executable).parent
IMPORT_RE = re.compile(rb"^from cortex\.v1 import", re.MULTILINE)


def generate(dest: Path) -> None:
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_DIR}", f"-I{include}",
        f"--python_out={dest}", f"--grpc_python_out={dest}", f"--mypy_out={dest}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={dest}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    for path in dest.rglob("*.py*"):
        data = IMPORT_RE.sub(b"from cortex._proto.cortex.v1 import", path.read_bytes())
        path.write_bytes(data)
    for pkg in [dest / "cortex", dest / "cortex" / "v1"]:
        (pkg / "__init__.py").write_text("")
    (dest / "__init__.py").write_text(
        '"""Generated from proto/ by scripts/gen_proto.py; never edit by hand."""\n')


def main() -> int:
    check = "--check" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        if check:
            cmp = filecmp.dircmp(tmp, OUT_DIR)
            stale = _diff(cmp)
            if stale:
                print("generated protobuf code is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            return 0
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(tmp, OUT_DIR, ignore=shutil.ignore_patterns("__pycache__"))
    return 0


def _diff(cmp: filecmp.dircmp[str]) -> list[str]:
    out = [f for f in cmp.left_only + cmp.right_only + cmp.diff_files if f != "__pycache__"]
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    out += mismatch + errors
    for sub in cmp.subdirs.values():
        out += _diff(sub)
    return sorted(set(out))


if __name__ == "__main__":
    sys.exit(main())
