"""A small reading of the repository's Dockerfile for tests: stages and instructions.

Enough of the Dockerfile syntax for what this Dockerfile uses (parser
directives, comments, line continuations, ``ARG`` defaults, ``ENV k=v ...``,
exec-form JSON arrays); anything else is kept as raw text. The tests use it
to check the final stage and to replay the builder stage's commands.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case), raw arguments and line number."""

    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        """The arguments split as a shell would (for COPY, FROM, ...)."""
        return shlex.split(self.args)

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"line {self.line}: not an exec-form array"
        return [str(v) for v in value]

    def env_pairs(self) -> dict[str, str]:
        """The ``key=value`` pairs of an ENV or ARG instruction."""
        pairs = {}
        for word in self.words():
            key, sep, value = word.partition("=")
            pairs[key] = value if sep else ""
        return pairs


@dataclass
class Stage:
    """A build stage: its base image, optional name and instructions after FROM."""

    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        """This stage's instructions with ``keyword``."""
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Every ENV set in this stage, later values winning."""
        env: dict[str, str] = {}
        for instruction in self.of("ENV"):
            env.update(instruction.env_pairs())
        return env


@dataclass
class Dockerfile:
    """Global ARGs (before the first FROM) and the stages, in order."""

    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    @property
    def final(self) -> Stage:
        """The last stage: what the image is."""
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        """Substitute global ``${ARG}`` / ``$ARG`` references by their defaults."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions joined across backslash continuations, comments dropped, with line numbers."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # blank, comment or parser directive
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(p for p in pending if p)))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return lines


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    """Read a Dockerfile into global ARGs and stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip(), number)
        if instruction.keyword == "FROM":
            words = [w for w in instruction.words() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name, line=number))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {number}: {keyword} before FROM"
            args.update(instruction.env_pairs())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args=args, stages=stages)
