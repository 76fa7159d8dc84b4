"""The layering the architecture promises, checked on every import statement:
core/ is framework-free (no django, celery, web or worker), core's serving modules never import
the offline tooling (core.training: training, evaluation, fitting), and the web side imports
nothing of worker/ (the tasks import the services: a circle; web sends jobs by name through
web.clinical.dispatch)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(
    folder: str, forbidden: tuple[str, ...], *, recursive: bool = True, root: Path = ROOT
) -> dict[str, list[str]]:
    found = {}
    for path in sorted((root / folder).rglob("*.py") if recursive else (root / folder).glob("*.py")):
        bad = sorted(
            m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden)
        )
        if bad:
            found[str(path.relative_to(root))] = bad
    return found


def test_core_imports_no_framework_and_nothing_of_web_or_worker() -> None:
    assert offenders("core", ("django", "celery", "channels", "rest_framework", "web", "worker")) == {}


def test_core_serving_modules_never_import_the_offline_tooling() -> None:
    # The serving modules are core/'s top-level files; core/training/ is the offline package.
    assert offenders("core", ("core.training",), recursive=False) == {}


def test_the_web_side_imports_nothing_of_the_worker() -> None:
    assert offenders("web", ("worker",)) == {}


def test_the_check_finds_any_worker_module_however_it_is_imported(tmp_path: Path) -> None:
    package = tmp_path / "web" / "clinical"
    package.mkdir(parents=True)
    (package / "sends.py").write_text("def send():\n    from worker.celery import app\n")
    (package / "ready.py").write_text("import worker.readiness\n")
    (package / "whole.py").write_text("import worker\n")
    (package / "fine.py").write_text("from web.clinical.dispatch import job_send\nimport workerpool\n")
    assert offenders("web", ("worker",), root=tmp_path) == {
        "web/clinical/ready.py": ["worker.readiness"],
        "web/clinical/sends.py": ["worker.celery"],
        "web/clinical/whole.py": ["worker"],
    }


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from django.conf import settings\n    import celery\n")
    assert imported_modules(module) == {"django.conf", "celery"}


MODULE_LINE_LIMIT = 600


def oversized_modules(root: Path = ROOT, limit: int = MODULE_LINE_LIMIT) -> dict[str, int]:
    """Product modules longer than `limit` lines (migrations are generated, not read)."""
    found = {}
    for folder in ("core", "web", "worker"):
        for path in sorted((root / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                found[str(path.relative_to(root))] = lines
    return found


def test_no_product_module_outgrows_one_concern() -> None:
    """A module over 600 lines holds more than one concern: split it where the concern ends."""
    assert oversized_modules() == {}


def test_the_size_check_finds_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "web" / "migrations").mkdir(parents=True)
    (tmp_path / "web" / "long.py").write_text("x = 1\n" * 601)
    (tmp_path / "web" / "migrations" / "0001_initial.py").write_text("x = 1\n" * 900)
    assert oversized_modules(tmp_path) == {"web/long.py": 601}
