"""The package's shape: imports run one way through the stages, and the run layout is spelled in one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rnnfarm.launch import pipeline
from rnnfarm.layout import Run
from rnnfarm.storage import Store

from .conftest import make_spec

PACKAGE = Path(__file__).resolve().parent.parent / "rnnfarm"
# Top to bottom: a module may import its own stage and the stages below it, never one above.
STAGES = ["cli", "serving", "launch", "insight", "runs", "engine", "corpus", "shared"]
# Path pieces of the run layout on storage: only rnnfarm/layout.py spells them in code.
LAYOUT_PIECES = re.compile(
    r"(^|/)(metrics|samples|trials|runs|best)/|(^|/)step-|checkpoint-|checkpoint_manager_snapshot"
    r"|^(run\.json|SHA256SUMS|leaderboard\.(parquet|csv)|report\.html|samples\.(json|jsonl|txt)|config\.json)$"
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return parts[1]
    if module in ("rnnfarm.cli", "rnnfarm.__main__"):
        return "cli"
    return "shared"


def imports(module: str, path: Path) -> set[str]:
    """The rnnfarm modules ``module`` imports, anywhere in it (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    known, found = modules(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rnnfarm")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("rnnfarm"):
                named = {f"{base}.{a.name}" for a in node.names} & known.keys()
                found |= named or {base}
    return found - {module}


def test_every_import_points_to_the_same_stage_or_one_below_it():
    upward = []
    for module, path in modules().items():
        for target in imports(module, path):
            if STAGES.index(stage(target)) < STAGES.index(stage(module)):
                upward.append(f"{module} ({stage(module)}) imports {target} ({stage(target)})")
    assert not upward, "\n".join(upward)


def test_the_modules_import_each_other_without_a_cycle():
    graph = {module: imports(module, path) for module, path in modules().items()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_every_stage_says_what_it_owns_and_what_it_may_import():
    for name in STAGES[1:-1]:
        init = PACKAGE / name / "__init__.py"
        if name == "serving" and not init.exists():
            continue  # a stage not written yet
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc, f"rnnfarm/{name}/__init__.py"


def strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants of code (docstrings left out), with their line numbers."""
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_only_the_layout_module_spells_a_path_of_the_run_layout():
    spelled = []
    for module, path in modules().items():
        if module == "rnnfarm.layout":
            continue
        for line, text in strings(ast.parse(path.read_text())):
            if LAYOUT_PIECES.search(text):
                spelled.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert not spelled, "\n".join(spelled)


def test_ray_trains_checkpoint_snapshot_names_the_checkpoints_it_kept(ray_local, tmp_path):
    """Ray Train's checkpoint_manager_snapshot.json is not a public API: if an upgrade changes it, this fails."""
    job = make_spec(str(tmp_path), name="kept", train={"steps": 6, "eval_every": 2, "keep_best": 2})
    pipeline.run(job)
    trial = Run.under(Store.at(str(tmp_path)), "kept").trial()
    registered = trial.registered()
    on_storage = sorted(p.name for p in Path(trial.url).glob("checkpoint-*"))
    assert registered and set(registered) <= set(on_storage)
    assert len(registered) == 2  # keep_best: the two best by val loss, and Ray deleted the other
