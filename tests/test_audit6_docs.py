"""Docs audit 6: what README.md and docs/ARCHITECTURE.md state that tests/test_docs.py does not yet run.

tests/test_docs.py runs README's "A taste" (with ``compile=True`` swapped for eager), the cited paths and names,
the import direction of each file and the docstring examples. This file adds: the taste's compiled line as
written, the README's commented conversion line, its SSA-sample claim, the commands and options of the bash
blocks (benchmarks, ``make tiny``, ``python -m mlcore.serve``), the tiny models' figures, the KV-cache protocol of
ARCHITECTURE's Seam 1, and the dependency rules test_docs.py's import test leaves out (``bench``'s private
helpers, the private helpers' relative imports, ``privacy/audit/`` as privacy's only way to ``model`` and
``training``, and what ``import mlcore.<package>`` actually loads).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mlcore"
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARCH = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
TINY = SRC / "assets" / "tiny"


def _bash_lines(text: str) -> list[str]:
    """Command lines of every ```bash block, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [ln.split("#", 1)[0].strip() for b in blocks for ln in b.splitlines() if ln.split("#", 1)[0].strip()]


# --- README: the lines of "A taste" that tests/test_docs.py does not run as written ---------------------------

@pytest.mark.slow
def test_readme_compiled_generate_line_runs_as_written_and_equals_eager() -> None:
    """``generate(model, out, max_new_tokens=20, compile=True)``: runs (inductor compile) and gives eager's tokens."""
    from mlcore.inference import generate
    from mlcore.training import load_tiny

    line = next(ln for ln in README.splitlines() if "compile=True" in ln)
    assert line.split("#")[0].strip() == "out = generate(model, out, max_new_tokens=20, compile=True)"
    model, tok = load_tiny("target")
    prompt = generate(model, torch.tensor([tok.encode("The with statement")]), max_new_tokens=20)
    compiled = generate(model, prompt, max_new_tokens=20, compile=True)
    eager = generate(model, prompt, max_new_tokens=20)
    assert compiled.shape == (1, prompt.shape[1] + 20)
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_readme_commented_conversion_line(arch: str, tmp_path: Path) -> None:
    """README: "any tiny LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / GPT2LMHeadModel converts with
    equal logits: ours = Transformer.from_hf(hf_model); Transformer.from_pretrained("folder/") (offline,
    safetensors only)"."""
    import transformers

    from mlcore.model import Transformer

    assert "Transformer.from_hf(hf_model); Transformer.from_pretrained(" in README
    torch.manual_seed(0)
    small = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    cls, cfg = {
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(**small)),
        "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig(**small, sliding_window=8)),
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**small)),
        "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4,
                                                                       n_positions=64)),
    }[arch]
    hf_model = cls(cfg).eval()
    ids = torch.randint(0, 96, (2, 20))
    with torch.no_grad():
        ref = hf_model(ids).logits
        ours = Transformer.from_hf(hf_model).eval()
        torch.testing.assert_close(ours(ids), ref, atol=1e-4, rtol=1e-4)
        hf_model.save_pretrained(tmp_path)  # safetensors by default
        assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
        loaded = Transformer.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(ids), ref, atol=1e-4, rtol=1e-4)


def test_readme_ssa_sample_numbers_stay_as_written() -> None:
    """README: "the SSA's published sample numbers, 123-45-6789 among them, score below the threshold and stay as
    written", while the taste's real-looking SSN is masked."""
    from mlcore.privacy import mask_pii

    assert "123-45-6789" in README
    assert mask_pii("ssn 123-45-6789", strategy="mask") == "ssn 123-45-6789"
    assert mask_pii("ssn 536-22-1234", strategy="mask") == "ssn ***-**-1234"


# --- README: commands, options and figures --------------------------------------------------------------------

def test_readme_benchmark_commands_name_real_topics_presets_and_devices(capsys: pytest.CaptureFixture) -> None:
    """Every ``python -m benchmarks`` line of README uses topics, presets and devices the CLI accepts (checked
    without running a benchmark: the CLI refuses a bad value before it runs anything, exit code 2)."""
    from benchmarks.__main__ import main
    from mlcore.bench import discover

    lines = [ln for ln in _bash_lines(README) if "-m benchmarks" in ln]
    assert len(lines) >= 2
    topics = set(discover())
    assert main(["--preset", "no-such-preset", "--out", "unused"]) == 2
    presets = set(re.search(r"one of ([\w, ]+), got", capsys.readouterr().err).group(1).split(", "))
    assert presets == {"quick", "full"}  # README: "quick preset"; DESIGN: quick and full
    assert main(["--device", "no-such-device", "--out", "unused"]) == 2
    assert "auto, cpu or cuda" in capsys.readouterr().err
    for ln in lines + ["python -m benchmarks anchors"]:  # README's prose names `python -m benchmarks anchors` too
        args = ln.split("-m benchmarks", 1)[1].split()
        names = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or not args[i - 1].startswith("--"))]
        assert set(names) <= topics, (ln, topics)
        opts = dict(zip(args[len(names)::2], args[len(names) + 1::2], strict=True))
        assert set(opts) <= {"--preset", "--device", "--out"}, ln
        assert opts.get("--preset", "quick") in presets and opts.get("--device", "auto") in {"auto", "cpu", "cuda"}
    assert "make bench" in README and "--preset $(PRESET) --device $(DEVICE)" in (ROOT / "Makefile").read_text()


def test_readme_make_tiny_is_the_recorded_command_and_its_figures_hold() -> None:
    """README: target 4.0M parameters, held-out perplexity 101; 2-layer draft 0.9M, perplexity 113; vocabulary
    4096; ``make tiny`` retrains them in about 7 minutes; the Makefile's command is the one the log recorded."""
    from mlcore.training import load_tiny
    from mlcore.training.pretrain import PRESETS

    log = json.loads((TINY / "train_log.json").read_text())
    recipe = re.search(r"\ntiny:.*\n\t\$\(BIN\)/(python .*)\n", (ROOT / "Makefile").read_text()).group(1)
    assert recipe == log["command"] == (TINY / "COMMAND.txt").read_text().splitlines()[0]
    assert "tiny" in PRESETS
    assert "make tiny` retrains them\n(about 7 minutes on 2 CPU cores)" in README
    assert 6 * 60 <= log["total_seconds"] <= 8 * 60 and log["threads"] == 1
    m = re.search(r"\*\*target\*\* \(([\d.]+)M parameters, held-out perplexity (\d+)\) and a\n(\d)-layer "
                  r"\*\*draft\*\* \(([\d.]+)M, perplexity (\d+)\)", README)
    assert m, "README's tiny-model sentence changed; update this test with it"
    params_t, ppl_t, layers_d, params_d, ppl_d = float(m[1]), int(m[2]), int(m[3]), float(m[4]), int(m[5])
    assert round(log["target"]["heldout_perplexity"]) == ppl_t and round(log["draft"]["heldout_perplexity"]) == ppl_d
    target, tok = load_tiny("target")
    draft, _ = load_tiny("draft")
    assert round(sum(p.numel() for p in target.parameters()) / 1e6, 1) == params_t
    assert round(sum(p.numel() for p in draft.parameters()) / 1e6, 1) == params_d
    assert draft.config.n_layers == layers_d
    assert tok.vocab_size == target.config.vocab_size == draft.config.vocab_size == 4096
    assert "(vocabulary 4096)" in README


def test_serve_cli_flags_and_defaults_as_documented() -> None:
    """DESIGN / README: ``python -m mlcore.serve --model tiny-target|DIR [--host 127.0.0.1] [--port 8000]
    [--api-keys-file F]``, keys also from ``MLCORE_API_KEYS=k1,k2``; no keys at all is refused."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "mlcore.serve", "--help"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    for flag in ("--model", "--host", "--port", "--api-keys-file", "--pii-policy"):
        assert flag in res.stdout
    assert "`python -m mlcore.serve`" in README
    from mlcore.serve.security import ApiKeys

    keys = ApiKeys.load(None, env="key-one-0001,key-two-0002")  # "k1,k2": keys of at least 8 characters
    assert len(keys) == 2 and keys.check("key-two-0002") is not None and keys.check("key-three-03") is None
    with pytest.raises(ValueError, match="at least 8 characters"):  # what the docstrings now say
        ApiKeys.load(None, env="k1,k2")
    security, cli = sys.modules["mlcore.serve.security"], (SRC / "serve" / "__main__.py").read_text()
    assert security.MIN_KEY_LENGTH == 8 and "``MIN_KEY_LENGTH`` = 8 characters" in " ".join(security.__doc__.split())
    assert "(each key at least 8 characters)" in " ".join(cli.split())
    # no keys: the server refuses to start (exit code != 0) before loading a model
    res = subprocess.run([sys.executable, "-m", "mlcore.serve", "--model", "tiny-target"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode != 0 and "MLCORE_API_KEYS" in res.stderr


def test_serve_cli_defaults_are_loopback_8000() -> None:
    src = (SRC / "serve" / "__main__.py").read_text(encoding="utf-8")
    assert re.search(r'"--host", default="127\.0\.0\.1"', src) and re.search(r'"--port", type=int, default=8000', src)


# --- docs/ARCHITECTURE.md, Seam 1: the KV-cache protocol, for every cache generate names -----------------------

def _caches() -> dict[str, object]:
    from mlcore.inference import DynamicCache, PagedCache, QuantizedCache, SlidingWindowCache, StaticCache

    return {"dynamic": DynamicCache(), "static": StaticCache(16), "paged": PagedCache(8, 4),
            "sliding": SlidingWindowCache(16), "int8": QuantizedCache(16)}


@pytest.mark.parametrize("name", ["dynamic", "static", "paged", "sliding", "int8"])
def test_kv_cache_protocol_as_documented(name: str) -> None:
    """``keys, values, key_index = cache.update(layer_idx, k_new, v_new, index_new)`` with the documented shapes,
    one ``key_index`` tensor for every layer of a step, ``get_seq_length`` a Python int, ``crop(n)``."""
    cache = _caches()[name]
    B, H, T, D = 2, 2, 3, 4
    idx = torch.arange(T).expand(B, T).clone()
    idx[0, 0] = -1  # a padded column
    k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    keys, values, key_index = cache.update(0, k, v, idx)
    assert keys.shape[:2] == (B, H) and keys.shape[3] == D and values.shape == keys.shape
    assert key_index.shape == (B, keys.shape[2]) and not key_index.dtype.is_floating_point
    _, _, key_index_1 = cache.update(1, k, v, idx)
    assert key_index_1 is key_index  # "the same key_index tensor to every layer of a step"
    n = cache.get_seq_length(layer_idx=0)
    assert type(n) is int and n == T
    cache.crop(1)
    assert cache.get_seq_length() == 1
    dtype = getattr(cache, "dtype", None)
    assert dtype is None or isinstance(dtype, torch.dtype)


def test_transformers_caches_are_refused_with_a_clear_message() -> None:
    """ARCHITECTURE: "transformers' caches (``update(key, value, layer_idx)``) are refused with a clear message"."""
    import transformers

    from mlcore.inference import generate
    from mlcore.model import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)).eval()
    ids = torch.randint(0, 64, (1, 4))
    hf_cache = transformers.DynamicCache()
    with pytest.raises((ValueError, TypeError), match="cache"):
        model(ids, cache=hf_cache)
    with pytest.raises((ValueError, TypeError), match="cache"):
        generate(model, ids, max_new_tokens=2, cache=hf_cache)


def test_greedy_threshold_and_quantized_linear_seam_as_documented() -> None:
    """ARCHITECTURE: ``GREEDY_BELOW`` = 1e-5; ``quantize_model`` keeps ``lm_head`` by default; ``QuantizedLinear``
    has ``in_features``/``out_features``, ``.kernel``, ``.kernel_for(dtype)``, ``.last_kernel`` and a
    ``weight_format`` state-dict entry that refuses NF4 codes loaded into an FP4 layer."""
    from mlcore.inference.sampling import GREEDY_BELOW
    from mlcore.quant import QuantizedLinear, quantize, quantize_model

    assert GREEDY_BELOW == 1e-5 and "`GREEDY_BELOW` = 1e-5" in ARCH
    net = torch.nn.ModuleDict({"proj": torch.nn.Linear(64, 32), "lm_head": torch.nn.Linear(32, 16)})
    quantize_model(net, "int8")
    assert isinstance(net["proj"], QuantizedLinear) and type(net["lm_head"]) is torch.nn.Linear
    layer = net["proj"]
    assert (layer.in_features, layer.out_features) == (64, 32) and layer.last_kernel is None
    layer(torch.randn(2, 64))
    assert isinstance(layer.kernel, str) and layer.last_kernel == layer.kernel_for(torch.float32)
    w = torch.randn(32, 64)
    nf4, fp4 = QuantizedLinear(quantize(w, "nf4")), QuantizedLinear(quantize(w, "fp4"))
    assert "weight_format" in nf4.state_dict()
    with pytest.raises(ValueError, match="weight_format|nf4|fp4"):
        fp4.load_state_dict(nf4.state_dict())


# --- docs/ARCHITECTURE.md, "Layers and dependency direction": the rules test_docs.py's import test leaves out ---

def _mlcore_imports(path: Path, source: str | None = None) -> list[tuple[str, bool]]:
    """(absolute module name, made inside a function) of every mlcore import in one file, relative ones resolved."""
    package = path.relative_to(SRC.parent).parts[:-1]  # the package the file sits in: ("mlcore", ...)
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
              for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            names = [f"{mod}.{a.name}" for a in node.names] if node.module is None or mod == "mlcore" else [mod]
        elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]  # importlib.import_module("mlcore.x") is an import too
        else:
            continue
        out += [(n, id(node) in inside) for n in names if n == "mlcore" or n.startswith("mlcore.")]
    return out


def test_private_helpers_import_nothing_of_mlcore_even_relatively() -> None:
    """"Private top-level helpers (``mlcore/_*.py``) ... import nothing of mlcore" (``from . import x`` included)."""
    helpers = sorted(SRC.glob("_*.py"))
    assert helpers
    wrong = [f"{p.name}: {name}" for p in helpers if p.name != "__init__.py" for name, _ in _mlcore_imports(p)]
    assert not wrong, wrong


def test_bench_imports_only_the_documented_private_helpers() -> None:
    """"``bench`` ... imports nothing of mlcore but the private ``_onednn.py``, ``_row_dot.py`` and
    ``_gemm_template.py`` helpers"."""
    found = {name for p in (SRC / "bench").rglob("*.py") for name, _ in _mlcore_imports(p)
             if not name.startswith("mlcore.bench")}
    assert found <= {"mlcore._onednn", "mlcore._row_dot", "mlcore._gemm_template"}, found


def test_privacy_reaches_model_and_training_only_from_its_audit_package_lazily() -> None:
    """"``privacy``'s recognizers, transforms and guards stand alone (only ``privacy/audit/`` ... imports ``model``
    and ``training``)"."""
    wrong = []
    for p in (SRC / "privacy").rglob("*.py"):
        for name, lazy in _mlcore_imports(p):
            if name.startswith("mlcore.privacy") or name.split(".")[1].startswith("_"):
                continue
            in_audit = p.relative_to(SRC / "privacy").parts[0] == "audit"
            if not (in_audit and lazy and name.split(".")[1] in {"model", "training"}):
                wrong.append(f"{p.relative_to(SRC)}: {name}{' (lazy)' if lazy else ''}")
    assert not wrong, wrong


def test_serve_and_finetune_reach_sideways_only_where_the_doc_says() -> None:
    """"``serve/runner.py`` loads the model through ``model`` and ``training``, and ``serve/engine.py`` checks,
    inside a function, that it serves a ``model.Transformer``"; finetune's ``privacy`` imports (``mask_pii`` and the
    synthetic records) are made inside functions of its runs."""
    wrong = []
    for p in (SRC / "serve").rglob("*.py"):
        for name, lazy in _mlcore_imports(p):
            pkg = name.split(".")[1]
            if pkg in {"model", "training"} and not (lazy and p.name in {"runner.py", "engine.py"}):
                wrong.append(f"{p.relative_to(SRC)}: {name}")
    for p in (SRC / "finetune").rglob("*.py"):
        for name, lazy in _mlcore_imports(p):
            if name.split(".")[1] in {"privacy", "inference", "bench"} and not lazy:
                wrong.append(f"{p.relative_to(SRC)}: {name}")
    assert not wrong, wrong
    assert "`serve/engine.py` checks, inside a function, that it serves a `model.Transformer`" in " ".join(ARCH.split())


def test_the_import_scan_sees_every_form_of_import() -> None:
    """The scanner above must be able to fail: relative, aliased, function-level and importlib forms are seen."""
    code = ("from ..model import Transformer\nfrom .. import eval\nimport mlcore.rag as r\nfrom . import engine\n"
            "def f():\n    import importlib\n    importlib.import_module('mlcore.bench')\n")
    found = _mlcore_imports(SRC / "serve" / "probe.py", source=code)  # parsed only: no file is written
    assert sorted(found) == [("mlcore.bench", True), ("mlcore.eval", False), ("mlcore.model", False),
                             ("mlcore.rag", False), ("mlcore.serve.engine", False)]
    assert _mlcore_imports(SRC / "_helper.py", source="from . import _onednn\n") == [("mlcore._onednn", False)]


# what `import mlcore.<package>` may load: the packages below it, per the doc's layer drawing and bullet list
LEAVES = {"attention", "positional", "tokenizer", "quant"}
BELOW = {
    "attention": set(), "positional": set(), "tokenizer": set(), "quant": set(), "bench": set(),
    "privacy": set(),  # recognizers, transforms, guards stand alone; audit/ imports model/training lazily
    "model": LEAVES, "training": LEAVES | {"model"}, "inference": LEAVES | {"model"},
    "finetune": LEAVES | {"model", "training"},
    "eval": LEAVES | {"model", "training", "inference", "finetune", "privacy"},
    "rag": LEAVES | {"model", "training", "inference", "finetune", "privacy", "eval"},
    "serve": LEAVES | {"model", "training", "inference", "privacy"},
}


def test_importing_a_package_loads_only_packages_below_it() -> None:
    """"... so ``import mlcore.<package>`` loads only packages below it" (run: each import in a fresh process)."""
    script = ("import sys, mlcore.{p}; print(sorted({{m.split('.')[1] for m in sys.modules "
              "if m.startswith('mlcore.') and not m.split('.')[1].startswith('_')}} - {{'{p}'}}))")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    procs = {p: subprocess.Popen([sys.executable, "-c", script.format(p=p)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for p in BELOW}
    wrong = {}
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
        if not loaded <= BELOW[p]:
            wrong[p] = sorted(loaded - BELOW[p])
    assert not wrong, wrong
