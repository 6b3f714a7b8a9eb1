"""The layering rule (docs/DESIGN.md section 15): every import inside ``src/infusion``, at module top or inside a
function, points to its own layer or a lower one; and no module outside ``infusion/methods/<name>/`` compares
against a method's name."""

import ast
import re
from pathlib import Path

import infusion

SRC = Path(infusion.__file__).resolve().parent.parent

# (module prefix, layer): the longest matching prefix decides; "*" stands for one method package
LAYERS = [
    ("infusion", 0),  # the package root: its version and lazy exports
    ("infusion.core", 0),
    ("infusion.world", 0),  # the built-in model: depends on core only
    ("infusion.methods", 1),  # the registry and the two contracts
    ("infusion.methods.*", 1),  # each method's generation side: loader, file format, processors
    ("infusion.training.data", 2),
    ("infusion.training.config", 2),
    ("infusion.training.prior", 2),
    ("infusion.mlm", 2),
    ("infusion.methods.*.training", 3),  # each method's trainer plugin
    ("infusion.training", 4),  # the one trainer
    ("infusion.customized", 4),  # the one generator
    ("infusion.metrics", 5),
    ("infusion.evaluation", 5),
    ("infusion.toy", 5),
    ("infusion.app", 6),
    ("infusion.commands", 6),
    ("infusion.cli", 6),
]


def layer_of(module: str) -> int:
    best, layer = -1, None
    for prefix, n in LAYERS:
        pat = re.escape(prefix).replace(r"\*", r"[a-z_0-9]+")
        if re.fullmatch(pat + r"(\..*)?", module) and prefix.count(".") > best:
            best, layer = prefix.count("."), n
    assert layer is not None, module
    return layer


def modules():
    for f in sorted((SRC / "infusion").rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), f


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno


def test_no_import_runs_up_the_layers():
    up = []
    for mod, path in modules():
        for target, line in imports(path):
            if target.split(".")[0] == "infusion" and layer_of(target) > layer_of(mod):
                up.append(f"{path.relative_to(SRC)}:{line} {mod} (layer {layer_of(mod)}) imports {target} "
                          f"(layer {layer_of(target)})")
    assert not up, "\n".join(up)


def test_no_relative_imports():
    """Absolute imports only: the layer check reads module names, and a moved file keeps its imports."""
    rel = [f"{p.relative_to(SRC)}:{n.lineno}" for _, p in modules() for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.ImportFrom) and n.level]
    assert not rel, rel


def test_the_layer_check_catches_an_upward_import():
    assert layer_of("infusion.core.placeholders") == 0 and layer_of("infusion.methods.lora.loader") == 1
    assert layer_of("infusion.methods.lora.training") == 3 and layer_of("infusion.training.trainer") == 4
    assert layer_of("infusion.methods.infusion.pipeline") == 1 and layer_of("infusion.app.ui") == 6


def test_no_code_outside_a_method_package_names_a_method():
    """``== "lora"``, ``in ("dreambooth", ...)`` and the like live only in ``infusion/methods/<name>/``."""
    from infusion.methods import available_methods

    names = "|".join(re.escape(n) for n in available_methods())
    compare = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = []
    for mod, path in modules():
        if mod.startswith("infusion.toy"):  # the toy experiment's own 2-D models (its "infusion", "kv", "full")
            continue
        if re.fullmatch(r"infusion\.methods\.[a-z_0-9]+(\..*)?", mod) and mod.count(".") >= 2 \
                and mod.split(".")[2] not in ("registry", "base", "customization"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if compare.search(line.split("#")[0]):
                found.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)
