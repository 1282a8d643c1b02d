"""What may import what (the README's architecture section draws it): a module imports only from
lower layers or its own package, and nothing but the CLI imports a stage."""
import ast

import pytest

from helpers import REPO

STAGES = {"check", "eda", "folds", "train", "infer", "pseudo", "tune", "submit", "score", "lb", "export"}
LAYER = {"errors": 0, "io": 0, "pixels": 0, "config": 1, "data": 2, "models": 2, "competition": 2, "engine": 3,
         "inference": 4, **{s: 5 for s in STAGES}, "cli": 6, "__main__": 6, "__init__": 6}


def _unit(module: str) -> str:
    """pipeline.engine.trainer -> engine; pipeline.train -> train."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports():
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                names = [node.module] if node.module != "pipeline" else [f"pipeline.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pipeline.")]
            for target in names:
                yield module, target


def test_every_module_has_a_layer():
    units = {_unit(m) for m, _ in _imports()} | {_unit(t) for _, t in _imports()}
    assert units <= set(LAYER), units - set(LAYER)


def violation(module: str, target: str) -> str | None:
    src, dst = _unit(module), _unit(target)
    if src == dst or src in ("cli", "__main__") or dst == "errors":  # the exception classes are for every layer
        return None
    if dst in STAGES:
        return f"{module} imports the stage {target}: move what it needs into a package"
    if LAYER[dst] >= LAYER[src]:
        return f"{module} (layer {LAYER[src]}) imports {target} (layer {LAYER[dst]})"
    return None


@pytest.mark.parametrize("module,target", sorted(set(_imports())))
def test_import_direction(module, target):
    assert violation(module, target) is None, violation(module, target)


@pytest.mark.parametrize("module,target", [
    ("pipeline.infer", "pipeline.train"),  # what the old layout did: inference imported the training stage
    ("pipeline.score", "pipeline.submit"),
    ("pipeline.config.load", "pipeline.engine.runtime"),  # upwards
    ("pipeline.data.pool", "pipeline.competition.metrics"),  # sideways, same layer
])
def test_the_rule_catches_violations(module, target):
    assert violation(module, target)
