"""The documentation keeps up with the code: every setting the code reads is on
docs/configuration.md, README.md stays a first reader's page, every file the docs point to
exists, and code, comments and docs describe the product, not the tickets it was built under."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
README_MAX_LINES = 250

# Where settings are read: the Python packages, and the files that start processes.
PYTHON_DIRS = ("core", "web", "worker")
LAUNCH_FILES = (
    "docker-compose.yml",
    "docker-compose.s3.yml",
    "Procfile",
    "Makefile",
    "Dockerfile",
    ".env.example",
    ".ci/run",
)
LAUNCH_DIRS = ("scripts", "docker")
# Shell and compose read a variable from outside with a default: ${NAME:-x}, ${NAME:=x},
# ${NAME-x}; make with NAME ?= x; a Dockerfile with ARG NAME.
SHELL_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?[-=][^}]*\}")
MAKE_VARIABLE = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*\?=", re.MULTILINE)
BUILD_ARGUMENT = re.compile(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
RADTRIAGE_NAME = re.compile(r"\bRADTRIAGE_[A-Z0-9_]+\b")
# Shell variables the scripts set themselves (not settings a person passes in).
SCRIPT_LOCALS = {"UP"}

TICKET_REFERENCE = re.compile(r"\bissues?\s*#?\d+\b|\bthe issue'?s\b", re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yml", ".yaml", ".html", ".js", ".css", ".txt", ".toml"}


def _python_files() -> Iterator[Path]:
    for folder in PYTHON_DIRS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _launch_files() -> Iterator[Path]:
    for name in LAUNCH_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for folder in LAUNCH_DIRS:
        yield from sorted(p for p in (ROOT / folder).rglob("*") if p.is_file())


def _is_environ(node: ast.expr) -> bool:
    """`os.environ` (or a bare `environ`)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _reads_environment(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute) and func.attr in {"get", "setdefault"}:
        return _is_environ(func.value)
    if isinstance(func, ast.Attribute):
        return func.attr == "getenv"
    return isinstance(func, ast.Name) and func.id in {"getenv", "env_bool"}


def _env_names_in(tree: ast.AST) -> set[str]:
    """Literal names read from the environment: os.environ.get/setdefault("X"), os.environ["X"],
    os.getenv("X"), and the settings module's env_bool("X", ...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args and _reads_environment(node.func):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
    return names


def _settings_from_environment() -> dict[str, set[str]]:
    """Each setting web/settings.py defines from the environment -> the variables it reads."""
    tree = ast.parse((ROOT / "web" / "settings.py").read_text())
    defined: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            read = _env_names_in(node.value) if node.value is not None else set()
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and read:
                        defined.setdefault(name.id, set()).update(read)
    return defined


def variables_the_code_reads() -> dict[str, set[str]]:
    """Every environment variable read anywhere the product starts or runs -> where."""
    found: dict[str, set[str]] = {}

    def note(name: str, path: Path) -> None:
        found.setdefault(name, set()).add(str(path.relative_to(ROOT)))

    for path in _python_files():
        text = path.read_text()
        for name in _env_names_in(ast.parse(text)) | set(RADTRIAGE_NAME.findall(text)):
            note(name, path)
    for path in _launch_files():
        text = path.read_text(errors="replace")
        names = set(SHELL_VARIABLE.findall(text)) | set(RADTRIAGE_NAME.findall(text))
        if path.name == "Makefile":
            names |= set(MAKE_VARIABLE.findall(text))
        if "Dockerfile" in path.name:
            names |= set(BUILD_ARGUMENT.findall(text))
        for name in names - SCRIPT_LOCALS:
            note(name, path)
    return found


def _documented() -> str:
    assert CONFIGURATION.is_file(), "docs/configuration.md is missing"
    return CONFIGURATION.read_text()


def test_every_environment_variable_the_code_reads_is_on_the_configuration_page() -> None:
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", _documented()))
    read = variables_the_code_reads()
    assert "RADTRIAGE_ORPHAN_AFTER" in read and "DATABASE_URL" in read  # the scan sees the code
    missing = {name: sorted(where) for name, where in read.items() if name not in documented}
    assert not missing, f"read by the code but not named in docs/configuration.md: {missing}"


def test_every_setting_the_code_reads_names_its_variable_on_the_configuration_page() -> None:
    """`settings.ORPHAN_AFTER` in the code comes from RADTRIAGE_ORPHAN_AFTER: the page names
    both, so a reader of the code finds the variable and a reader of the page the setting."""
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", _documented()))
    from_environment = _settings_from_environment()
    read_as_settings: set[str] = set()
    for path in _python_files():
        read_as_settings |= set(re.findall(r"\bsettings\.([A-Z][A-Z0-9_]*)\b", path.read_text()))
    assert "ORPHAN_AFTER" in read_as_settings & set(from_environment)  # the scan sees the code
    missing = {
        setting: sorted(variables)
        for setting in read_as_settings & set(from_environment)
        for variables in [from_environment[setting]]
        if not variables <= documented or (setting not in variables and setting not in documented)
    }
    assert not missing, f"settings read by the code whose name or variable is not documented: {missing}"


def test_the_readme_is_a_first_readers_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    text = "\n".join(lines)
    assert "make run" in text and "make test" in text
    for page in ("architecture", "configuration", "deployment", "operations", "models", "benchmarks"):
        assert (ROOT / "docs" / f"{page}.md").is_file(), f"docs/{page}.md is missing"
        assert f"docs/{page}.md" in text, f"README.md does not link docs/{page}.md"


def _doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_the_docs_point_to_exists(doc: Path) -> None:
    text = doc.read_text()
    named = re.findall(r"`((?:core|web|worker|bench|scripts|docs|docker|tests|models)/[\w./-]+)`", text)
    named += re.findall(r"\]\(((?!https?:|#)[\w./-]+?)(?:#[\w-]*)?\)", text)
    missing = sorted(
        {
            p
            for p in named
            if "*" not in p and "<" not in p and not (doc.parent / p).exists() and not (ROOT / p).exists()
        }
    )
    assert not missing, f"{doc.relative_to(ROOT)} points to files that do not exist: {missing}"


def _product_text_files() -> Iterator[Path]:
    for folder in ("core", "web", "worker", "bench", "scripts", "docs"):
        yield from sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in TEXT_SUFFIXES)
    yield README
    yield from sorted((ROOT / "models").glob("**/*.md"))


def test_code_and_docs_cite_no_tickets() -> None:
    """They say what the product does and why, not which ticket asked for it."""
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _product_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if TICKET_REFERENCE.search(line)
    ]
    assert not cited, "ticket references:\n" + "\n".join(cited)
