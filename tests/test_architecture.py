"""Imports flow one way: ``memory -> optim -> {meta, forensic} -> experiments``.

Read from the source with ``ast`` (nothing is imported), so the rule holds without anyone
remembering it. Each part may import only the parts listed in ``ALLOWED``; the package root
(``assocmem/__init__.py``) composes the library; ``experiments/`` composes everything and is the
only place that imports hydra. Every import counts: module level, inside functions, relative,
and ``importlib.import_module("...")`` with a literal name. docs/architecture.md has the map.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("memory", "optim", "meta", "forensic", "training", "storage")
ALLOWED = {
    "memory": set(),
    # the one training loop: any model, any torch.optim optimizer; nothing of ours
    "training": set(),
    # checkpoint files (safetensors + JSON header); nothing of ours
    "storage": set(),
    "optim": {"memory"},
    "meta": {"memory", "optim", "training", "storage"},
    # forensic takes any torch.optim optimizer: never ours, never the learned memory's
    "forensic": {"memory", "training", "storage"},
    "root": {"memory", "optim", "meta", "forensic", "training", "storage"},
    "experiments": {
        "root",
        "memory",
        "optim",
        "meta",
        "forensic",
        "training",
        "storage",
        "experiments",
    },
}
HARNESS_ONLY = ("hydra", "omegaconf")


def part_of_file(path: Path, root: Path) -> str:
    rel = path.relative_to(root).parts
    if rel[0] == "experiments":
        return "experiments"
    if rel[:2] != ("src", "assocmem"):
        raise ValueError(f"{path} is outside src/assocmem and experiments/")
    return "root" if len(rel) == 3 else rel[2]


def module_of_file(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "src":
        parts = parts[1:]
    return parts[:-1] if parts[-1] == "__init__" else parts


def part_of_module(name: str) -> str | None:
    """The part a module belongs to, ``"root"`` for ``assocmem`` itself, None if not ours."""
    head, *rest = name.split(".")
    if head == "experiments":
        return "experiments"
    if head != "assocmem":
        return None
    if not rest:
        return "root"
    return rest[0] if rest[0] in PARTS else "root"


def imported_modules(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``tree``; ``package`` resolves relative ones.

    ``from assocmem import optim`` names the part ``assocmem.optim``; ``from assocmem import
    MemoryOptimizer`` names the root.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            literal = args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)
            if name in ("import_module", "__import__") and literal:
                found.append((node.lineno, args[0].value))
    return found


def violations(root: Path) -> list[str]:
    """Every import in ``root``'s ``src/assocmem`` and ``experiments`` against the rule."""
    problems = []
    files = sorted((root / "src" / "assocmem").rglob("*.py"))
    files += sorted((root / "experiments").rglob("*.py"))
    for path in files:
        source = part_of_file(path, root)
        module = module_of_file(path, root)
        package = module if path.name == "__init__.py" else module[:-1]
        where = path.relative_to(root)
        for line, name in imported_modules(ast.parse(path.read_text(), str(path)), package):
            target = part_of_module(name)
            if name.split(".")[0] in HARNESS_ONLY and source != "experiments":
                problems.append(f"{where}:{line}: {name} (hydra lives only in experiments/)")
            elif target is not None and target != source and target not in ALLOWED[source]:
                problems.append(f"{where}:{line}: {source} imports {target} ({name})")
    return problems


def test_imports_flow_one_way():
    assert violations(ROOT) == []


def test_every_package_of_the_library_is_a_part_with_a_rule():
    packages = {p.parent.name for p in (ROOT / "src" / "assocmem").glob("*/__init__.py")}
    assert packages == set(PARTS)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name in ("src/assocmem/__init__.py", "experiments/__init__.py"):
        files.setdefault(name, "")
    for part in PARTS:
        files.setdefault(f"src/assocmem/{part}/__init__.py", "")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


BAD = {
    # the cycle this test was written against: the learned preset inside optim
    "optim imports meta": (
        "src/assocmem/optim/presets/learned.py",
        "from assocmem.meta.checkpoint import load_checkpoint\n",
    ),
    "relative import up and across": (
        "src/assocmem/optim/presets/x.py",
        "from ...meta import features\n",
    ),
    "lazy import inside a function": (
        "src/assocmem/memory/x.py",
        "def f():\n    from assocmem.optim import registry\n",
    ),
    "import by string": (
        "src/assocmem/optim/x.py",
        "import importlib\nmeta = importlib.import_module('assocmem.meta')\n",
    ),
    "forensic through the package root": (
        "src/assocmem/forensic/x.py",
        "from assocmem import MemoryOptimizer\n",
    ),
    "forensic imports optim": ("src/assocmem/forensic/x.py", "import assocmem.optim\n"),
    "meta imports forensic": ("src/assocmem/meta/x.py", "from assocmem import forensic\n"),
    "library imports the harness": ("src/assocmem/optim/x.py", "from experiments import run\n"),
    "hydra in the library": ("src/assocmem/forensic/x.py", "import hydra\n"),
    "omegaconf in the library": ("src/assocmem/meta/x.py", "from omegaconf import OmegaConf\n"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_checker_catches_an_arrow_against_the_flow(tmp_path, case):
    path, text = BAD[case]
    problems = violations(_tree(tmp_path, {path: text}))
    assert len(problems) == 1 and problems[0].startswith(path), problems


def test_the_checker_accepts_the_allowed_arrows(tmp_path):
    files = {
        "src/assocmem/__init__.py": "from assocmem import memory, meta\nfrom .optim import x",
        "src/assocmem/memory/x.py": "import torch\nfrom assocmem.memory import y\nfrom . import z",
        "src/assocmem/optim/x.py": "from assocmem.memory import hebbian_write\nfrom .y import z",
        "src/assocmem/meta/x.py": "from assocmem.optim.registry import r\nimport assocmem.memory",
        "src/assocmem/forensic/x.py": "import numpy\nfrom assocmem.forensic.masks import m",
        "experiments/x.py": "import hydra\nfrom assocmem import MemoryOptimizer\nimport omegaconf",
    }
    assert violations(_tree(tmp_path, files)) == []
