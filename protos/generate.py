"""Generate the Python stubs for protos/ into services/common/oddity/v1 (import path oddity.v1).

    python protos/generate.py          # write the stubs
    python protos/generate.py --check  # exit 1 when the committed stubs are stale

protoc writes `from oddity.v1 import x_pb2`; the stubs ship in the oddity-common
distribution, whose folder path is its import path, so they import as written.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("oddity") / "v1"
TARGET = ROOT / "services" / "common" / "oddity" / "v1"
INIT_TEXT = '"""Generated from protos/oddity/v1 by protos/generate.py; do not edit."""\n'


def _generate(out_dir: Path) -> Path:
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    include = Path(protoc.__file__).resolve().parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_dir / PROTO_PACKAGE
    (package / "__init__.py").write_text(INIT_TEXT)
    return package


def _stale_files(generated: Path) -> list[str]:
    expected = {p.name for p in generated.iterdir() if p.is_file()}
    present = {p.name for p in TARGET.glob("*") if p.is_file()} if TARGET.exists() else set()
    stale = sorted(expected ^ present)
    stale += sorted(n for n in expected & present if not filecmp.cmp(generated / n, TARGET / n, shallow=False))
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the committed stubs differ from protos/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
        if args.check:
            stale = _stale_files(generated)
            if stale:
                print(
                    "stale generated stubs: " + ", ".join(stale) + "; run: python protos/generate.py", file=sys.stderr
                )
                return 1
            print("generated stubs are current")
            return 0
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(generated, TARGET, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
