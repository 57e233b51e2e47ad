"""The docs say what the code does: README's "A taste" runs, every path and name they cite exists, and the
imports between packages follow the direction docs/ARCHITECTURE.md states."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mlcore"
DOCS = ("README.md", "docs/ARCHITECTURE.md", "CONTRIBUTING.md")


def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _taste() -> str:
    """README's "A taste" snippet (its first python block)."""
    blocks = re.findall(r"```python\n(.*?)```", _read("README.md"), flags=re.S)
    assert blocks, "README.md has no python block"
    return blocks[0]


def test_readme_taste_runs_and_its_comments_hold() -> None:
    code = _taste()
    # the compiled step takes a cold inductor compile (~20 s); tests/inference/test_compiled.py proves it gives the
    # eager tokens, so here the same line runs eagerly
    assert code.count("compile=True") == 1
    scope: dict = {}
    exec(compile(code.replace("compile=True", "compile=False"), "README.md", "exec"), scope)  # noqa: S102
    tok, model = scope["tok"], scope["model"]
    assert scope["logits"].shape == (1, len(tok.encode("The with statement")), 4096)  # "(1, T, 4096)"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4e6, rel=0.05)  # "4M-parameter"
    out, stats = scope["out"], scope["stats"]
    assert out.shape == (1, 5 + 20) and stats is not None
    # the mask_pii line's comment is its output
    line = next(ln for ln in code.splitlines() if ln.startswith("mask_pii("))
    call, comment = line.split("#", 1)
    assert eval(call, scope) == comment.strip().strip('"')  # noqa: S307


def _cited_paths() -> list[tuple[str, str]]:
    """(doc, path) for every backticked file or folder path of the package the docs cite."""
    out = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", _read(doc), flags=re.S)
        for line in text.splitlines():
            base = None  # a bare `name.py` in a table cell is relative to the cell's first folder
            for tok in re.findall(r"`([^`\s]+)`", line):
                if re.fullmatch(r"[\w./]+/", tok) or re.fullmatch(r"[\w/]+\.py", tok):
                    if "/" in tok:
                        base = tok.rstrip("/").rsplit("/", 1)[0] if tok.endswith(".py") else tok.rstrip("/")
                        out.append((doc, tok))
                    elif base is not None:
                        out.append((doc, f"{base}/{tok}"))
    return out


def test_cited_paths_exist() -> None:
    paths = _cited_paths()
    assert len(paths) > 60
    missing = []
    for doc, p in paths:
        p = p.removeprefix("mlcore/").removeprefix("src/mlcore/")
        roots = (SRC, ROOT, SRC / "privacy")  # `guards/data/` sits in the privacy row
        if not any((r / p).exists() or next((r / p).parent.rglob(Path(p).name), None) for r in roots):
            missing.append(f"{doc}: {p}")
    assert not missing, missing


# names the docs cite, as module.attr paths (checked by import, so a rename shows here)
NAMES = """
mlcore.attention.scaled_dot_product_attention mlcore.attention.flash_attention mlcore.model.Transformer
mlcore.tokenizer.BPETokenizer mlcore.training.load_tiny mlcore.privacy.detect_pii mlcore.privacy.mask_pii
mlcore.inference.generate mlcore.inference.speculative_generate mlcore.finetune.LoraConfig mlcore.finetune.apply_lora
mlcore.model.Transformer.from_hf mlcore.model.Transformer.from_pretrained mlcore.model.Transformer.forward
mlcore.attention.inputs.AttentionInputs mlcore.attention.kv_cache.KVCache mlcore.attention.naive.single_query_attention
mlcore.attention.fused_linear.LinearFusion mlcore.attention.fused_linear.LinearFusion.set_trace_tiles
mlcore.attention.fused_linear.LinearFusion.tensors mlcore.attention.fused_linear.LinearFusion.release
mlcore.attention.fused_linear.LinearFusion._unfused mlcore.attention.fused_linear.prepare_linear
mlcore.attention.fused_linear.decode_layout mlcore.attention.fused_linear.release_all
mlcore._row_dot.RowDotLinear mlcore._row_dot.realized mlcore._row_dot.tiled_weight mlcore._row_dot.tiled_row_dot_linear
mlcore.inference.sampling.is_greedy mlcore.inference.sampling.GREEDY_BELOW
mlcore.inference.static_cache.StaticCache.update_at mlcore.inference.static_cache.StaticCache.advance
mlcore.inference.static_cache.StaticCache.dtype mlcore.inference.compiled.CompiledDecoder
mlcore.inference.compiled.CompiledDecoder.start mlcore.inference.compiled.CompiledDecoder.step
mlcore.inference.compiled._tiled_everywhere mlcore.inference.compile_options.CPU_OPTIONS
mlcore.inference.compile_options.ROW_DOT_OPTIONS mlcore.inference.direct_graph.GraphCapture
mlcore.inference.direct_graph.DirectCall mlcore.inference.paged_batch.PagedBatch mlcore.model.norm.RMSNorm.reference
mlcore.quant.linear.QuantizedLinear mlcore.quant.linear.QuantizedLinear.prepare_traced
mlcore.quant.linear.QuantizedLinear.concat_out_features mlcore.quant.linear.QuantizedLinear.kernel
mlcore.quant.linear.QuantizedLinear.kernel_for mlcore.quant.QuantizedTensor mlcore.quant.quantize_model
mlcore.finetune.lora.LoraLinear mlcore.finetune.save_adapter mlcore.finetune.load_adapter
mlcore.training.TrainConfig mlcore.privacy.scan_input mlcore.privacy.OutputGuard mlcore.serve.guard.GuardedText
mlcore.serve.audit_log.AuditLog mlcore.bench.Result.from_timing mlcore.bench.Goal mlcore.bench.Table
mlcore.bench.peak_memory mlcore.eval.latency.measure_generate
""".split()


@pytest.mark.parametrize("name", NAMES)
def test_cited_name_exists(name: str) -> None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    for attr in parts[i:]:
        obj = getattr(obj, attr)


def test_forward_signature_as_documented() -> None:
    import inspect

    from mlcore.model import Transformer

    sig = "`Transformer.forward(input_ids, *, attention_mask, cache, position_ids, logits_to_keep, validate)`"
    assert sig in _read("docs/ARCHITECTURE.md")
    params = inspect.signature(Transformer.forward).parameters
    assert list(params) == ["self", "input_ids", "attention_mask", "cache", "position_ids", "logits_to_keep", "validate"]
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[2:])


# docs/ARCHITECTURE.md, "Layers and dependency direction": what each package may import, and which of those
# imports must be made inside a function (the sideways ones, and all of eval's and rag's)
LEAVES = {"attention", "positional", "tokenizer", "quant"}
ALLOWED = {
    "attention": set(), "positional": set(), "tokenizer": set(), "quant": set(), "bench": set(),
    "model": LEAVES, "training": LEAVES | {"model"}, "inference": LEAVES | {"model"},
    "finetune": LEAVES | {"model", "training"}, "privacy": set(),
}
LAZY_ALLOWED = {
    "attention": {"positional"}, "privacy": {"model", "training"},
    "finetune": {"inference", "privacy", "bench"},
    "eval": LEAVES | {"model", "training", "inference", "finetune", "privacy"},
    "rag": LEAVES | {"model", "training", "inference", "finetune", "privacy", "eval"},
}
SERVE = LEAVES | {"model", "training", "inference", "privacy"}


def _imports() -> list[tuple[str, str, bool, str]]:
    """(package, imported package, lazy, file) for every import of another mlcore package in src/mlcore."""
    out = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if len(rel) == 1:
            continue  # mlcore/__init__.py and the private helpers, checked below
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom):
                names = [".".join(["mlcore", *rel[: len(rel) - node.level]] + ([node.module] if node.module else []))]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "mlcore" and len(parts) > 1 and parts[1] != rel[0] and not parts[1].startswith("_"):
                    out.append((rel[0], parts[1], id(node) in lazy, "/".join(rel)))
    return out


def test_imports_follow_the_documented_direction() -> None:
    found = _imports()
    assert len(found) > 50
    wrong = []
    for pkg, target, lazy, file in found:
        ok = target in SERVE if pkg == "serve" else (
            target in ALLOWED.get(pkg, set()) or (lazy and target in LAZY_ALLOWED.get(pkg, set())))
        if not ok:
            wrong.append(f"{file} imports mlcore.{target}{' (inside a function)' if lazy else ''}")
    assert not wrong, wrong
    helpers = [p for p in SRC.glob("_*.py") if p.name != "__init__.py"]  # "sit below every layer"
    assert helpers
    for p in helpers:
        assert not re.search(r"^\s*(from|import) mlcore", p.read_text(encoding="utf-8"), re.M), p.name


def test_contributing_and_readme_match_makefile_and_pyproject() -> None:
    makefile, pyproject = _read("Makefile"), _read("pyproject.toml")
    contributing, readme = _read("CONTRIBUTING.md"), _read("README.md")
    assert "docs/ARCHITECTURE.md" in contributing
    for target in ("test:", "bench:", "lint:", "tiny:", "anchors:"):
        assert f"\n{target}" in makefile
    assert "ruff check" in makefile and "MLCORE_QUICK=1" in makefile and "--nbmake notebooks" in makefile
    extras = re.search(r"pip install -q -e '\.\[([\w,]+)\]'", makefile).group(1)
    assert f"-e .[{extras}]" in readme
    for marker in ("cuda", "slow"):
        assert f'"{marker}: ' in pyproject and f"@pytest.mark.{marker}" in contributing
    assert 'requires-python = ">=3.10"' in pyproject and "Python >= 3.10" in readme



# every source module whose docstrings hold ``>>>`` examples
DOC_EXAMPLES = sorted(".".join(p.relative_to(SRC.parent).with_suffix("").parts) for p in SRC.rglob("*.py")
                      if ">>> " in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("module", DOC_EXAMPLES)
def test_docstring_examples_run_as_written(module: str) -> None:
    """The ``>>>`` examples in docstrings are executed (two of them failed: a missing output, an undefined name)."""
    import doctest

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0, result
