"""A Dockerfile as stages (dockerfile-parse reads the instructions: continuations, comments,
ARG substitution in FROM), and what the deploy tests ask of them: the effective user, env and
entry point of a stage, the stages an image is built from, the `pip install` commands of each
stage, and which files a .dockerignore keeps out of the build context."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

PIP_OPTIONS_WITH_VALUE = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-e",
    "--editable",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--only-binary",
    "--no-binary",
}


@dataclass
class PipInstall:
    """One `pip install` command: local projects (repository folder, extras), named requirements
    and options (name -> values)."""

    stage: str
    position: int  # order of the RUN instruction within the Dockerfile
    projects: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    requirements: list[Requirement] = field(default_factory=list)
    options: dict[str, list[str]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)  # local paths not copied from the repository


@dataclass
class Stage:
    index: int
    name: str
    base: str  # after ARG substitution
    parent: Stage | None  # the earlier stage this one is FROM, if any
    instructions: list[tuple[int, str, str]]  # (position, INSTRUCTION, value)

    def chain(self) -> list[Stage]:
        """This stage and the stages it is FROM, oldest first."""
        return [*(self.parent.chain() if self.parent else []), self]

    def own(self, instruction: str) -> list[str]:
        return [value for _, name, value in self.instructions if name == instruction]

    def inherited(self, instruction: str) -> list[str]:
        return [value for stage in self.chain() for value in stage.own(instruction)]

    def user(self) -> str | None:
        users = self.inherited("USER")
        return users[-1] if users else None

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.inherited("ENV"):
            env.update(parse_env(value))
        return env

    def entrypoint(self) -> list[str] | None:
        entrypoints = self.inherited("ENTRYPOINT")
        if not entrypoints:
            return None
        value = entrypoints[-1]
        assert value.startswith("["), f"stage {self.name}: ENTRYPOINT must be the exec (JSON) form: {value}"
        return json.loads(value)

    def copies(self) -> list[tuple[dict[str, str], list[str], str]]:
        """COPY/ADD instructions as (flags, sources, destination)."""
        result = []
        for value in self.own("COPY") + self.own("ADD"):
            words = json.loads(value) if value.startswith("[") else shlex.split(value)
            flags = dict(word[2:].partition("=")[::2] for word in words if word.startswith("--"))
            paths = [word for word in words if not word.startswith("--")]
            result.append((flags, paths[:-1], paths[-1]))
        return result

    def copied_from(self) -> list[str]:
        return [flags["from"] for flags, _, _ in self.copies() if "from" in flags]


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        parser = DockerfileParser(path=str(path))
        bases = iter(parser.parent_images)  # FROM images with build args substituted
        self.stages: list[Stage] = []
        for item in parser.structure:
            instruction, value, position = item["instruction"], item["value"], item["startline"]
            if instruction == "FROM":
                words = value.split()
                name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(self.stages))
                base = next(bases)
                parent = next((stage for stage in self.stages if stage.name == base), None)
                self.stages.append(Stage(len(self.stages), name, base, parent, []))
            elif instruction != "COMMENT" and self.stages:
                self.stages[-1].instructions.append((position, instruction, value))

    @property
    def final(self) -> Stage:
        """The stage `docker build` without --target produces."""
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (stage,) = [stage for stage in self.stages if stage.name == name]
        return stage

    def image_stages(self, target: Stage) -> list[Stage]:
        """Every stage whose results can reach the target image: the stages it is FROM and those
        it copies from, recursively."""
        seen: dict[str, Stage] = {}

        def visit(stage: Stage) -> None:
            for member in stage.chain():
                if member.name in seen:
                    continue
                seen[member.name] = member
                for source in member.copied_from():
                    visit(self.stage(source))

        visit(target)
        return sorted(seen.values(), key=lambda stage: stage.index)

    def pip_installs(self, stages: list[Stage], repository: Path) -> list[PipInstall]:
        installs = []
        for stage in stages:
            copied = _copied_paths(stage)
            workdir = _workdir(stage.parent) if stage.parent else "/"
            for position, instruction, value in stage.instructions:
                if instruction == "WORKDIR":
                    workdir = posixpath.join(workdir, value)
                if instruction != "RUN":
                    continue
                for words in _commands(value):
                    args = _pip_install_args(words)
                    if args is not None:
                        installs.append(_pip_install(stage, position, args, workdir, copied, repository))
        return installs


def parse_env(value: str) -> dict[str, str]:
    words = shlex.split(value)
    if words and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(word.partition("=")[::2] for word in words)


def _copied_paths(stage: Stage) -> dict[str, str]:
    """Absolute destination -> repository path, for COPY instructions from the build context
    (along the stage's chain)."""
    copied: dict[str, str] = {}
    for member in stage.chain():
        workdir = _workdir(member.parent) if member.parent else "/"
        for _, instruction, value in member.instructions:
            if instruction == "WORKDIR":
                workdir = posixpath.join(workdir, value)
            if instruction not in {"COPY", "ADD"}:
                continue
            words = json.loads(value) if value.startswith("[") else shlex.split(value)
            if any(word.startswith("--from") for word in words):
                continue
            paths = [word for word in words if not word.startswith("--")]
            sources, destination = paths[:-1], posixpath.normpath(posixpath.join(workdir, paths[-1]))
            if len(sources) == 1:
                copied[destination] = posixpath.normpath(sources[0])
    return copied


def _workdir(stage: Stage) -> str:
    """The working directory at the end of a stage (WORKDIR is inherited)."""
    workdir = "/"
    for value in stage.inherited("WORKDIR"):
        workdir = posixpath.join(workdir, value)
    return workdir


def _commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at &&, ||, ; and |)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _pip_install_args(words: list[str]) -> list[str] | None:
    if len(words) >= 2 and re.fullmatch(r"(.*/)?pip3?", words[0]) and words[1] == "install":
        return words[2:]
    if len(words) >= 4 and re.fullmatch(r"(.*/)?python3?(\.\d+)?", words[0]) and words[1:4] == ["-m", "pip", "install"]:
        return words[4:]
    return None


def _pip_install(
    stage: Stage, position: int, args: list[str], workdir: str, copied: dict[str, str], repository: Path
) -> PipInstall:
    install = PipInstall(stage.name, position)
    words = iter(args)
    for word in words:
        if word.startswith("-"):
            name, has_value, value = word.partition("=")
            if name in PIP_OPTIONS_WITH_VALUE and not has_value:
                value = next(words)
            install.options.setdefault(name, []).append(value)
            continue
        if word.startswith((".", "/")) or "/" in word.split("[")[0]:
            path, _, extras = word.partition("[")
            absolute = posixpath.normpath(posixpath.join(workdir, path))
            source = copied.get(absolute)
            if source is None or not (repository / source / "pyproject.toml").is_file():
                install.unresolved.append(word)
                continue
            install.projects.append((source, frozenset(e.strip() for e in extras.rstrip("]").split(",") if e.strip())))
        else:
            install.requirements.append(Requirement(word))
    return install


class DockerIgnore:
    """.dockerignore as the Docker builder reads it: patterns matched against a path and each of
    its parent directories, `**` spanning directories, the last matching line winning, `!`
    re-including."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((re.compile(_pattern_regex(pattern)), include))

    def excludes(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for regex, include in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not include
        return excluded


def _pattern_regex(pattern: str) -> str:
    regex, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            regex += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            regex += re.escape(char)
        i += 1
    return regex
