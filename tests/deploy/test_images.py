"""The service images, read from their Dockerfiles (no image can be built here): multi-stage,
built in a builder stage and run from a slim final stage without build tools as a non-root
user, each installing exactly its own distributions (the serving images never torch or
transformers), the console script as entry point, and a build context without local state."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.dockerfiles import Dockerfile, DockerIgnore, PipInstall, Stage
from tests.deploy.services import REPO, SERVICES, UID, Service, distribution_folders

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH = "torch==2.13.0"
BUILD_TOOLS = {
    "gcc",
    "g++",
    "cc",
    "make",
    "cmake",
    "clang",
    "build-essential",
    "python3-dev",
    "libc6-dev",
    "git",
    "rustc",
    "cargo",
}
NEVER_IN_SERVING = {"torch", "transformers"}

services = pytest.mark.parametrize("service", SERVICES.values(), ids=SERVICES)


def dockerfile(service: Service) -> Dockerfile:
    return Dockerfile(service.dockerfile)


def own_distributions(service: Service) -> set[str]:
    """The service's folder and the folders of the workspace distributions it depends on."""
    folders = distribution_folders()
    dependencies = {Requirement(d).name for d in service.pyproject["project"]["dependencies"]}
    assert "oddity-common" in dependencies, f"{service.distribution} should depend on oddity-common"
    return {folders[service.distribution]} | {folders[name] for name in dependencies if name in folders}


def installs(service: Service, target: Stage) -> list[PipInstall]:
    file = dockerfile(service)
    result = file.pip_installs(file.image_stages(target), REPO)
    for install in result:
        assert not install.unresolved, f"{service.dockerfile}: pip installs {install.unresolved}, not copied from here"
        assert "-e" not in install.options and "--editable" not in install.options, "no editable installs in images"
        assert "-r" not in install.options and "--requirement" not in install.options, "name what is installed"
    return result


def serving_stage(service: Service) -> Stage:
    return dockerfile(service).final


def declared_dependencies(folder: str, extras: frozenset[str]) -> set[str]:
    """Names of the project's dependencies, with the given extras."""
    project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())
    requirements = list(project["project"].get("dependencies", []))
    for extra in extras:
        requirements += project["project"].get("optional-dependencies", {})[extra]
    return {Requirement(r).name for r in requirements}


@services
def test_multi_stage_with_a_non_root_final_stage(service):
    file = dockerfile(service)
    assert len(file.stages) >= 2, f"{service.dockerfile}: build in a builder stage, run from another"
    final = file.final
    user = final.user()
    assert user is not None, f"{service.dockerfile}: the final stage sets no USER (it would run as root)"
    uid, _, gid = user.partition(":")
    # Numeric, so kubelet's runAsNonRoot can check it without the image's /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: a numeric non-root uid"
    assert int(uid) == UID and (not gid or int(gid) == UID), f"USER {user}: the manifests run as {UID}"
    assert "slim" in final.chain()[0].base, f"the final stage should start from a slim base, not {final.base}"


@services
def test_final_stage_has_no_build_tools_and_builds_nothing(service):
    final = serving_stage(service)
    for stage in final.chain():
        for value in stage.own("RUN"):
            words = set(value.replace(";", " ").replace("&&", " ").split())
            assert not words & BUILD_TOOLS, f"stage {stage.name} installs build tools: {words & BUILD_TOOLS}"
            assert "pip" not in words and "wheel" not in words, (
                f"stage {stage.name} of the final image installs Python packages: build them in a builder stage"
            )
    assert any("from" in flags for stage in final.chain() for flags, _, _ in stage.copies()), (
        "the final stage copies what a builder stage built"
    )


@services
def test_entrypoint_is_the_console_script(service):
    assert serving_stage(service).entrypoint() == [service.console_script]


@services
def test_image_serves_beyond_loopback_and_writes_only_to_tmp(service):
    final = serving_stage(service)
    env = final.env()
    prefix = service.env_prefix
    assert env.get(prefix + "HOST") == "0.0.0.0"
    assert env.get(prefix + "METRICS_HOST") == "0.0.0.0"
    unknown = {name for name in env if name.startswith("ODDITY_")} - service.setting_names()
    assert not unknown, f"not settings of the {service.name}: {unknown}"
    # Read-only root filesystem: home and temporary files live on the /tmp emptyDir.
    assert env.get("HOME") == "/tmp" and env.get("TMPDIR") == "/tmp"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    exposed = {int(port.split("/")[0]) for value in final.inherited("EXPOSE") for port in value.split()}
    assert exposed == {service.default("port"), service.default("metrics_port")}


@services
def test_serving_image_installs_exactly_its_distributions(service):
    expected = own_distributions(service)
    done = installs(service, serving_stage(service))
    projects = {folder for install in done for folder, _ in install.projects}
    assert projects == expected, f"{service.name} image installs {sorted(projects)}, not {sorted(expected)}"
    extras = {folder: extras for install in done for folder, extras in install.projects if extras}
    assert not extras, f"the {service.name} image installs extras {extras}"
    named = {str(r) for install in done for r in install.requirements}
    if service.name == "trainer":
        assert named == {TORCH}, f"the trainer installs {named} by name; only {TORCH} (the CPU build) is expected"
    else:
        assert not named, f"the {service.name} image installs {named} besides its distributions"
        declared = set().union(*(declared_dependencies(folder, frozenset()) for folder in projects))
        assert not declared & NEVER_IN_SERVING, f"the {service.name}'s distributions declare {declared}"


@pytest.mark.parametrize(
    ("service", "target"),
    [(SERVICES["trainer"], None), (SERVICES["embedder"], "exporter")],
    ids=["trainer", "exporter"],
)
def test_torch_is_the_cpu_build_installed_first(service, target):
    file = dockerfile(service)
    done = installs(service, file.stage(target) if target else file.final)
    torch = [install for install in done if any(r.name == "torch" for r in install.requirements)]
    assert len(torch) == 1, "torch is installed once, pinned, on its own"
    (install,) = torch
    assert [str(r) for r in install.requirements] == [TORCH] and not install.projects
    assert install.options.get("--index-url") == [CPU_INDEX] or install.options.get("-i") == [CPU_INDEX]
    needing_torch = [
        i for i in done for folder, extras in i.projects if "torch" in declared_dependencies(folder, extras)
    ]
    assert needing_torch, "something installed here should need torch"
    assert all(install.position < later.position for later in needing_torch), (
        "torch (CPU) must be installed before the projects that depend on it, or pip pulls the CUDA build"
    )


def test_embedder_exporter_target_exports_with_torch_and_is_not_the_default():
    service = SERVICES["embedder"]
    file = dockerfile(service)
    exporter = file.stage("exporter")
    assert file.final is not exporter, "a plain `docker build` gives the serving image"
    done = installs(service, exporter)
    projects = {(folder, extras) for install in done for folder, extras in install.projects}
    assert ("services/embedder", frozenset({"export"})) in projects
    assert {folder for folder, _ in projects} == own_distributions(service)
    assert exporter.entrypoint() == ["oddity-embedder-export"]
    user = exporter.user()
    assert user is not None and user.split(":")[0] == str(UID)
    assert {stage.name for stage in file.image_stages(file.final)}.isdisjoint({"export-builder", "exporter"}), (
        "the serving image must not be built from the exporter's stages"
    )


@services
def test_health_check_is_in_the_image(service):
    """oddity-health-check is a console script of oddity-common, which every image installs."""
    done = installs(service, serving_stage(service))
    assert "services/common" in {folder for install in done for folder, _ in install.projects}


@services
def test_copied_sources_exist_and_are_in_the_build_context(service):
    ignore = DockerIgnore(REPO / ".dockerignore")
    for stage in dockerfile(service).stages:
        for flags, sources, _ in stage.copies():
            if "from" in flags:
                continue
            for source in sources:
                path = REPO / source
                assert path.exists(), f"{service.dockerfile}: COPY {source}: no such path"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in {".py", ".toml"}]
                files = [f for f in files if "__pycache__" not in f.parts]
                left_out = [str(f.relative_to(REPO)) for f in files if ignore.excludes(str(f.relative_to(REPO)))]
                assert files and not left_out, f"COPY {source}: left out of the build context: {left_out[:5]}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "volumes/models/sensors/1/manifest.json",
        "volumes/data/datasets/x/dataset.yaml",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/oddity/common/server.data.json",
        ".ruff_cache/0.6.0/123",
        "services/common/oddity/common/__pycache__/server.cpython-311.pyc",
        "services/detector/oddity_detector.egg-info/PKG-INFO",
        "oddity.egg-info/PKG-INFO",
        "bench/results/quality.json",
        "tests/conftest.py",
    ],
)
def test_dockerignore_keeps_local_state_out(path):
    assert DockerIgnore(REPO / ".dockerignore").excludes(path)


def test_dockerignore_matches_like_docker(tmp_path: Path):
    """The matcher the checks above rely on: parents, `**`, exceptions, the last line winning."""
    (tmp_path / ".dockerignore").write_text("*\n!services/\n**/__pycache__\n!services/keep/__pycache__\n")
    ignore = DockerIgnore(tmp_path / ".dockerignore")
    assert ignore.excludes("README.md") and ignore.excludes(".git/config")
    assert not ignore.excludes("services/detector/pyproject.toml")
    assert ignore.excludes("services/detector/oddity/__pycache__/x.pyc")
    assert not ignore.excludes("services/keep/__pycache__/x.pyc")
