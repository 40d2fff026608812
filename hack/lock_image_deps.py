"""Print the container image's pinned runtime dependencies (deploy/constraints.txt).

The pins are the versions installed in this virtualenv of every distribution
that autocanary needs at run time, transitively (no extras, no test tools),
with environment markers evaluated for Linux and this Python, as in the image:

    .venv/bin/python hack/lock_image_deps.py > deploy/constraints.txt

tests/unit/test_dockerfile_install.py installs the way the image does in a
fresh virtualenv and fails if what gets installed differs from these pins.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "autocanary"


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Canonical name -> installed version of every runtime dependency of ``project``."""
    pins: dict[str, str] = {}
    todo = [project]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins:
            continue
        dist = metadata.distribution(name)
        pins[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    del pins[canonicalize_name(project)]
    return pins


def main() -> int:
    """Write the constraints file to stdout."""
    print("# Runtime dependencies of the autocanary image, pinned; the Dockerfile installs with")
    print("#   pip install --constraint deploy/constraints.txt")
    print("# Regenerate after changing dependencies (in a virtualenv with the project installed):")
    print("#   .venv/bin/python hack/lock_image_deps.py > deploy/constraints.txt")
    for name, version in sorted(runtime_closure().items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
