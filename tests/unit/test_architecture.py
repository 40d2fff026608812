"""The import contracts in pyproject.toml deny by default: no module of the package escapes them.

``lint-imports`` checks the imports against the contracts; this checks the
contracts themselves, so that loosening them (a layer dropped, ``exhaustive``
switched off, a client library allowed to a whole package) fails a test that
says what was lost.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import autocanary

PACKAGE = Path(autocanary.__file__).parent
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"

#: Each external system's client library, and the only modules allowed to import it.
CLIENT_LIBRARIES = {
    "kubernetes": {
        "autocanary.adapters.kubernetes",
        "autocanary.adapters.kube_watch",
        "autocanary.apps.probe_service",
    },
    "prometheus_api_client": {"autocanary.adapters.prometheus"},
    "requests": {"autocanary.adapters.prometheus"},
    "httpx": {"autocanary.adapters.notify", "autocanary.adapters.prometheus_history"},
    "urllib3": {
        "autocanary.adapters.kubernetes",
        "autocanary.adapters.kube_watch",
        "autocanary.adapters.prometheus",
    },
}


def contracts() -> list[dict[str, Any]]:
    """The import-linter contracts as pyproject.toml declares them."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    assert config["root_package"] == "autocanary"
    found: list[dict[str, Any]] = config["contracts"]
    return found


def layers_contract() -> dict[str, Any]:
    """The one layers contract whose container is the whole package."""
    matching = [
        c for c in contracts() if c["type"] == "layers" and c.get("containers") == ["autocanary"]
    ]
    assert len(matching) == 1, "expected one layers contract with containers = ['autocanary']"
    return matching[0]


def layer_names(contract: dict[str, Any]) -> list[str]:
    """Every layer's module names, siblings (``a | b``, ``a : b``) split apart."""
    return [name.strip() for layer in contract["layers"] for name in re.split(r"[|:]", layer)]


def shipped_modules() -> list[str]:
    """Every module under src/autocanary, as a dotted name, found on disk (nothing imported)."""
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(("autocanary", *parts)))
    return modules


def test_every_module_of_the_package_is_in_a_layer() -> None:
    layers = set(layer_names(layers_contract()))
    uncovered = [
        module
        for module in shipped_modules()
        if module != "autocanary" and module.split(".")[1] not in layers
    ]
    assert uncovered == [], f"modules in no layer of pyproject.toml's layers contract: {uncovered}"


def test_the_layers_contract_is_exhaustive_and_names_only_what_exists() -> None:
    contract = layers_contract()
    assert contract.get("exhaustive") is True, "a new top-level module must fail lint-imports"
    children = {module.split(".")[1] for module in shipped_modules() if module != "autocanary"}
    names = layer_names(contract)
    assert len(names) == len(set(names)), f"a module named in two layers: {names}"
    assert set(names) == children


def test_the_decision_core_sits_below_the_adapters_and_the_daemon() -> None:
    names = layer_names(layers_contract())
    for core in ("rollout", "analysis", "config", "judge"):
        for outer in ("adapters", "daemon", "backtest", "cli", "apps"):
            assert names.index(outer) < names.index(core), f"{core} must sit below {outer}"


def test_each_client_library_is_forbidden_to_the_whole_package_but_its_adapter() -> None:
    for library, allowed in CLIENT_LIBRARIES.items():
        guarding = [
            c for c in contracts() if c["type"] == "forbidden" and library in c["forbidden_modules"]
        ]
        assert guarding, f"no contract forbids {library}"
        for contract in guarding:
            assert contract["source_modules"] == ["autocanary"], (
                f"{contract['name']!r} must forbid {library} to the whole package"
            )
            exempt = {
                importer.strip()
                for expression in contract.get("ignore_imports", [])
                for importer, imported in [expression.split("->")]
                if imported.strip() == library
            }
            assert exempt <= allowed, f"{library} allowed beyond its adapter: {exempt - allowed}"


def test_nothing_shipped_may_import_the_test_bed() -> None:
    assert any(
        c["type"] == "forbidden"
        and c["source_modules"] == ["autocanary"]
        and "autocanary_testbed" in c["forbidden_modules"]
        and not c.get("ignore_imports")
        for c in contracts()
    )
