"""The project's trained small models, shipped in ``mlcore/assets/tiny`` so nobody retrains them.

    from mlcore.training.assets import load_tiny, tiny_heldout_text
    target, tokenizer = load_tiny("target")     # Llama-style, ~4M parameters
    draft, _ = load_tiny("draft")               # 2 layers, same tokenizer (for speculative decoding)

Both were trained by ``python -m mlcore.training.pretrain --preset tiny`` (see ``COMMAND.txt`` and
``train_log.json`` next to them). The folders ``target/`` and ``draft/`` are Hugging Face ``LlamaForCausalLM``
folders too: ``transformers.AutoModelForCausalLM.from_pretrained(tiny_dir() / "target")`` loads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KINDS = ("target", "draft")


def tiny_dir() -> Path:
    """The folder holding the tiny models, tokenizer and training log."""
    return Path(__file__).resolve().parents[1] / "assets" / "tiny"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build the tiny models once with "
                                "`python -m mlcore.training.pretrain --preset tiny`")
    return path


def load_tiny_tokenizer(folder: str | Path | None = None):
    """The BPE tokenizer (vocabulary 4096, ``<|endoftext|>`` = 4095) both tiny models use."""
    from mlcore.tokenizer import BPETokenizer

    folder = Path(folder) if folder is not None else tiny_dir()
    return BPETokenizer.load(_require(folder / "tokenizer.bpe"))


def load_tiny(kind: str = "target", *, folder: str | Path | None = None):
    """``(model, tokenizer)``: the trained tiny ``kind`` ("target" or "draft") as an mlcore ``Transformer``
    in float32 and eval mode (stored in bf16), and its tokenizer."""
    from mlcore.model import Transformer

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = Path(folder) if folder is not None else tiny_dir()
    model = Transformer.from_pretrained(_require(folder / kind))
    return model.eval(), load_tiny_tokenizer(folder)


def tiny_train_log(folder: str | Path | None = None) -> dict[str, Any]:
    """``train_log.json``: configs, timings, loss history and held-out perplexity of each model."""
    folder = Path(folder) if folder is not None else tiny_dir()
    return json.loads(_require(folder / "train_log.json").read_text())


def tiny_heldout_text(folder: str | Path | None = None) -> str:
    """The held-out ``pydoc_data.topics`` text (topics never seen in training), for perplexity measurements."""
    from pydoc_data.topics import topics

    names = tiny_train_log(folder)["heldout_topics"]
    return "\n\n".join(topics[name] for name in names)
