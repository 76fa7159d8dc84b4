"""One way to switch a model on: web.clinical.registry.activation.registry_activate (artifact
check, reason, audit). Checked on the code: no module outside the registry itself calls the
low-level write (Registry.set_active) or changes `active_models` by hand, in core, web, worker,
bench or scripts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("core", "web", "worker", "bench", "scripts")
# The primitive's home and the one service that calls it (core's registry_sync seeds a new
# deployment with the shipped registry's choices, inside the same module).
OWNERS = {"core/registry.py", "web/clinical/registry/activation.py"}
MUTATORS = {"update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"}


def activations(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every way this module could switch a model on."""
    found: list[tuple[int, str]] = []

    def is_active_models(node: ast.AST) -> bool:
        target = node.value if isinstance(node, ast.Subscript) else node
        return isinstance(target, ast.Attribute) and target.attr == "active_models"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in ("set_active", "activate"):
                found.append((node.lineno, f".{name}(...)"))
            elif name == "register" and any(k.arg == "activate" for k in node.keywords):
                found.append((node.lineno, "register(..., activate=...)"))
            elif name in MUTATORS and is_active_models(node.func.value):
                found.append((node.lineno, f"active_models.{name}(...)"))
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            found += [(node.lineno, "active_models written") for t in targets if is_active_models(t)]
    return sorted(found)


def offenders() -> dict[str, list[tuple[int, str]]]:
    result = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name in OWNERS:
                continue
            hits = activations(ast.parse(path.read_text(encoding="utf-8")))
            if hits:
                result[name] = hits
    # Shell scripts and the Makefile may run Python inline: the same calls, as text.
    for path in [*sorted((ROOT / "scripts").glob("*.sh")), ROOT / "Makefile"]:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            hits = [(0, call) for call in (".set_active(", ".activate(", "active_models[") if call in text]
            if hits:
                result[str(path.relative_to(ROOT))] = hits
    return result


def test_only_the_registry_switches_a_model_on() -> None:
    assert offenders() == {}, (
        "Switch models on through web.clinical.registry.activation.registry_activate (the admin "
        "page, `manage.py activate_model`, `train --activate --reason`), never by hand."
    )


def test_the_check_sees_every_way_of_switching_a_model_on() -> None:
    code = """
reg.set_active("m")
registry.activate("m")
reg.register(entry, activate=True)
reg.active_models["pneumonia"] = "m"
reg.active_models.update(other)
del reg.active_models["pneumonia"]
reg.active_models = {}
print(reg.active_models.get("pneumonia"))
"""
    assert [what for _, what in activations(ast.parse(code))] == [
        ".set_active(...)",
        ".activate(...)",
        "register(..., activate=...)",
        "active_models written",
        "active_models.update(...)",
        "active_models written",
        "active_models written",
    ]
