"""The tests reach into Pulumi's runtime internals in one module only (tests/pulumi_runtime.py), so a
Pulumi upgrade that changes them breaks one file, which says what it relies on and why."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pulumi.runtime

from tests import kit

ADAPTER = kit.PROJECT_DIR / "tests" / "pulumi_runtime.py"
# The modules inside pulumi.runtime (rpc, settings, mocks, stack, sync_await, ...); the package's own
# attributes (Mocks, set_mocks, MockResourceArgs, ...) are the public API. `proto` is not an internal: it holds the
# messages of the provider protocol, the contract every provider plugin implements (embedded_default/providers).
RUNTIME_MODULES = {module.name for module in pkgutil.iter_modules(pulumi.runtime.__path__)} - {"proto"}


def runtime_internals_used(source: Path) -> set[str]:
    """The pulumi.runtime modules that ``source`` imports or reaches by attribute."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pulumi.runtime":
                used |= {alias.name for alias in node.names if alias.name in RUNTIME_MODULES}
            elif node.module.startswith("pulumi.runtime.") and node.module.split(".")[2] in RUNTIME_MODULES:
                used.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            imported = {a.name.split(".")[2] for a in node.names if a.name.startswith("pulumi.runtime.")}
            used |= imported & RUNTIME_MODULES
        elif isinstance(node, ast.Attribute) and node.attr in RUNTIME_MODULES and _is_pulumi_runtime(node.value):
            used.add(node.attr)
    return used


def _is_pulumi_runtime(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "runtime"
        and isinstance(node.value, ast.Name)
        and node.value.id == "pulumi"
    )


def test_only_the_adapter_uses_pulumis_runtime_internals() -> None:
    offenders = {
        str(path.relative_to(kit.PROJECT_DIR)): sorted(used)
        for path in sorted((kit.PROJECT_DIR / "tests").rglob("*.py"))
        if path != ADAPTER and (used := runtime_internals_used(path))
    }
    assert offenders == {}


def test_the_adapter_names_every_internal_it_uses() -> None:
    used = runtime_internals_used(ADAPTER)
    assert used, "the adapter is where the internals are used"
    docstring = ast.get_docstring(ast.parse(ADAPTER.read_text())) or ""
    assert [m for m in sorted(used) if f"pulumi.runtime.{m}." not in docstring] == []
