"""Packaging guarantees: one distribution per service folder whose folder path is its import
path, stubs current, and a detector install that pulls neither torch nor transformers."""

import importlib.util
import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from tests.support.servers import repo_root

SERVICES = ("common", "detector", "trainer", "embedder", "client")
#: The packages of each distribution whose modules docs/architecture.md's layout table lists.
PACKAGES = {name: (name,) for name in SERVICES} | {"client": ("client", "cli")}


def test_generated_stubs_are_current():
    result = subprocess.run(
        [sys.executable, "protos/generate.py", "--check"], cwd=repo_root(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_each_service_folder_is_one_distribution_whose_folder_path_is_its_import_path():
    root = repo_root()
    for name in SERVICES:
        folder = root / "services" / name
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        assert project["name"] == f"oddity-{name}"
        assert not (folder / "oddity" / "__init__.py").exists(), "oddity must stay a namespace package"
        for path in sorted((folder / "oddity").rglob("*.py")):
            module = ".".join(path.relative_to(folder).with_suffix("").parts).removesuffix(".__init__")
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin == str(path), module
    assert "package-dir" not in (root / "pyproject.toml").read_text()


def _closure(distribution: str) -> set[str]:
    """Every distribution that installing `distribution` pulls in (no extras)."""
    seen: set[str] = set()
    pending = [distribution]
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def test_detector_install_pulls_neither_torch_nor_transformers():
    closure = _closure("oddity-detector")
    assert {"oddity-common", "onnxruntime", "grpcio"} <= closure
    assert not {"torch", "transformers"} & closure


def test_embedder_serving_install_pulls_neither_torch_nor_transformers():
    closure = _closure("oddity-embedder")
    assert {"oddity-common", "onnxruntime", "tokenizers", "pillow"} <= closure
    assert not {"torch", "transformers"} & closure


def test_detector_runs_without_importing_torch_or_transformers():
    code = (
        "import sys, oddity.detector.main, oddity.v1.detector_pb2_grpc;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layout_names_every_module_of_every_service():
    """docs/architecture.md's layout table lists each service's modules: none missing, none stale."""
    root = repo_root()
    readme = (root / "docs" / "architecture.md").read_text()
    for name in SERVICES:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `services/{name}/` |"))
        listed = set(re.findall(r"`([a-z_0-9]+\.py)`", row)) | {f"{d}/" for d in re.findall(r"`([a-z_0-9]+)/`", row)}
        modules: set[str] = set()
        folders: set[str] = set()
        for package_name in PACKAGES[name]:
            package = root / "services" / name / "oddity" / package_name
            modules |= {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
            subfolders = {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
            for folder in subfolders:
                modules |= {p.name for p in (package / folder).glob("*.py") if p.name != "__init__.py"}
            folders |= subfolders
        assert listed >= modules | folders, (
            f"{name}: not in the layout of docs/architecture.md: {sorted((modules | folders) - listed)}"
        )
        stale = listed - modules - folders
        assert not stale, f"{name}: the layout of docs/architecture.md names what is not there: {sorted(stale)}"
