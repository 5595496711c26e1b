"""Static checks of the source tree (ast). The dependency direction, read from every module's imports
(lazy ones included): inside pipeline/ commands -> transforms -> {sources, render, caption} -> imaging
-> {storage, errors} -> schemas; model/, train/, eval/ and schemas/ never import pipeline/ and load
without Apache Beam. And every rejection reason pipeline/ emits is declared in schemas/rejected.py."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the checkout is the `smartbrush` package
PIPELINE = "smartbrush.pipeline"

# pipeline/ subpackage (or top-level module) -> rank; a module may import its own subpackage and
# any of lower rank, never one of its rank (siblings) or above.
RANKS = {"commands": 4, "transforms": 3, "sources": 2, "render": 2, "caption": 2, "imaging": 1, "storage": 0,
         "errors": 0}
BEAM_FREE = ("model", "train", "eval", "schemas")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("smartbrush",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def modules(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: pathlib.Path) -> set[str]:
    """Every module name an import in the file can refer to (`from a import b`: a and a.b)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def pipeline_part(module: str) -> str | None:
    """The pipeline/ subpackage (or top-level module) a name belongs to; None outside pipeline/."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["smartbrush", "pipeline"] and len(parts) > 2 else None


def test_every_pipeline_part_has_a_rank():
    parts = {p.name.removesuffix(".py") for p in (ROOT / "pipeline").iterdir()
             if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert parts == set(RANKS)


def test_pipeline_dependencies_run_one_way():
    wrong = []
    for path in modules("pipeline"):
        own = pipeline_part(module_name(path))
        if own is None:
            continue
        for target in imported(path):
            other = pipeline_part(target)
            if other is None or other == own or other not in RANKS:
                continue
            if RANKS[other] >= RANKS[own]:
                wrong.append(f"{path.relative_to(ROOT)} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", BEAM_FREE)
def test_formats_model_train_eval_never_import_pipeline(package):
    wrong = [f"{p.relative_to(ROOT)}: {t}" for p in modules(package) for t in imported(p)
             if t == PIPELINE or t.startswith(PIPELINE + ".")]
    assert not wrong, "\n".join(wrong)


def test_schemas_import_only_schemas_and_the_package_version():
    allowed = {"smartbrush", "smartbrush.__version__", "smartbrush.config", "smartbrush.schemas"}
    wrong = [f"{p.relative_to(ROOT)}: {t}" for p in modules("schemas") for t in imported(p)
             if (t == "smartbrush" or t.startswith("smartbrush.")) and t not in allowed
             and not t.startswith("smartbrush.schemas.")]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_imports():
    """The parser finds absolute, relative and lazy imports (a check that sees none passes vacuously)."""
    names = imported(ROOT / "pipeline" / "transforms" / "shards.py")
    assert "smartbrush.pipeline.transforms.shard_writer" in names and "apache_beam" in names
    assert pipeline_part("smartbrush.pipeline.render.crop") == "render"
    assert "smartbrush.pipeline.caption.blip_handler" in imported(ROOT / "pipeline" / "caption" / "blip.py")


def test_model_train_eval_schemas_load_without_beam():
    names = [module_name(p) for package in BEAM_FREE for p in modules(package)]
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps({'beam': sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam'),"
            " 'loaded': len([n for n in " + repr(names) + " if n in sys.modules])}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"beam": [], "loaded": len(names)}


# Calls that carry a rejection reason, and the position of the reason among their arguments.
REASON_ARGS = {"RecordError": 0, "rejection": 3, "reject": 0, "shard_rejections": 3}
KINDS = {"REJECTED", "FILTERED", "rejected", "filtered"}


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _string_constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}


def emitted_reasons() -> dict[str, str]:
    """reason -> where, for every reason literal (or module-level constant) pipeline/ passes to
    RecordError / rejection(...), returns as a (kind, reason, detail) verdict, or loops over as
    `for reason, ... in ((literal, ...), ...)`."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in modules("pipeline")}
    constants = {}
    for tree in trees.values():
        constants.update(_string_constants(tree))
    found = {}

    def add(node, path):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
        elif isinstance(node, ast.Name) and node.id in constants:
            found.setdefault(constants[node.id], f"{path.relative_to(ROOT)}:{node.lineno}")

    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node) in REASON_ARGS:
                i = REASON_ARGS[_callee(node)]
                args = node.args[i:i + 1] + [k.value for k in node.keywords if k.arg == "reason"]
                for arg in args:
                    add(arg, path)
            elif isinstance(node, ast.Tuple) and len(node.elts) == 3:  # (kind, reason, detail)
                kind = node.elts[0]
                if (isinstance(kind, ast.Attribute) and kind.attr in KINDS) or (
                        isinstance(kind, ast.Constant) and kind.value in KINDS):
                    add(node.elts[1], path)
            elif (isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and node.target.elts
                  and getattr(node.target.elts[0], "id", "") == "reason" and isinstance(node.iter, ast.Tuple)):
                for item in node.iter.elts:
                    if isinstance(item, ast.Tuple):
                        add(item.elts[0], path)
    return found


def test_every_emitted_reason_is_declared():
    from smartbrush.pipeline.sources import laion_fold
    from smartbrush.schemas import rejected

    emitted = emitted_reasons()
    # img2dataset's error messages map to reasons through a table (http_\1: the status code)
    emitted.update({template.replace("\\1", "404"): "pipeline/sources/laion_fold.py"
                    for _, template in laion_fold._ERROR_CLASSES})
    for known in ("too_small_at_resolution", "image_missing", "shard_corrupt", "sample_invalid", "caption_degenerate",
                  "max_punsafe", "url_missing", "not_recorded", "unknown_category"):
        assert known in emitted, f"the scan misses {known!r}"
    declared = set(rejected.REASONS_REJECTED) | set(rejected.REASONS_FILTERED)
    undeclared = {r: where for r, where in emitted.items()
                  if r not in declared and not rejected.HTTP_REASON.fullmatch(r)}
    assert not undeclared, f"reasons emitted but not in schemas/rejected.py: {undeclared}"
