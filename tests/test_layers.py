"""The package's layering: each stage imports only from the stages below it (issue 13).

Stages, bottom to top: the contract (``schema``, ``runs``, ``jsonl``, ``manifest``, ``paths``, ``redact``,
``prompts``, ``config``) < ``envs`` < ``synth`` < ``data`` < ``tune`` < ``eval`` < ``analysis`` <
``report`` < the command line (``python -m refinelib``). Imports inside functions count too: a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import refinelib

PACKAGE = Path(refinelib.__file__).parent
STAGES = ("envs", "synth", "data", "tune", "eval", "analysis", "report")


def stage(module: str) -> int:
    """0 for the contract modules, 1 + the stage's index for a stage's modules; the command line
    (``refinelib.__main__``) sits on top of them all."""
    if module == "refinelib.__main__":
        return 1 + len(STAGES)
    parts = module.split(".")
    return 1 + STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else 0


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imports(path: Path) -> set[str]:
    """The refinelib modules ``path`` imports (``from refinelib import x`` names module ``refinelib.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("refinelib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("refinelib"):
            out |= {f"{node.module}.{a.name}" for a in node.names} if node.module.count(".") == 0 \
                else {node.module}
    return out


def edges() -> list[tuple[str, str]]:
    return [(module_name(p), target) for p in sorted(PACKAGE.rglob("*.py")) for target in imports(p)]


def test_every_module_is_in_a_stage_or_the_contract():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    contract = {"__init__", "schema", "runs", "jsonl", "manifest", "paths", "prompts", "config", "redact",
                "options", "__main__", "__pycache__"}
    assert top - contract - set(STAGES) == set()


def test_no_stage_imports_a_stage_above_it():
    upward = [f"{a} -> {b}" for a, b in edges() if stage(b) > stage(a)]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The test above can fail: an envs module importing eval is one upward edge."""
    assert stage("refinelib.envs.base") < stage("refinelib.eval.agent")
    probe = tmp_path / "probe.py"
    probe.write_text("from refinelib.eval import agent\nfrom refinelib import schema\n")
    assert imports(probe) == {"refinelib.eval", "refinelib.schema"}
    assert stage("refinelib.eval") > stage("refinelib.envs.probe")
