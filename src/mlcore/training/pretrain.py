"""Train the project's own small models: a Llama-style target decoder and a 2-layer draft decoder.

    python -m mlcore.training.pretrain --preset tiny [--out src/mlcore/assets/tiny] [--seed 0]

Corpus: ``pydoc_data.topics`` (the ~465 kB of English that ships with every CPython). Whole topics are held
out (a seeded ~5 % of the characters) so that no held-out document was seen in training. Steps:

1. train mlcore's byte-level BPE (``vocab_size`` 4096 incl. ``<|endoftext|>``) on the training topics only;
2. tokenize each topic through ``datasets``, append ``<|endoftext|>``, pack into blocks of ``block_size``;
3. train the target, then the draft, with :func:`mlcore.training.train` (AdamW, warm-up + cosine);
4. store each with ``Transformer.save_pretrained`` (HF ``LlamaForCausalLM`` folder, bf16 to stay small),
   reload it and measure held-out perplexity of the *stored* weights;
5. write ``tokenizer.bpe`` (+ HF ``tokenizer.json`` and ``tokenizer_config.json``), ``train_log.json``, ``loss_curve.png``, ``COMMAND.txt``.

Load the results with :func:`mlcore.training.assets.load_tiny` instead of retraining.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .data import tokenize_and_pack
from .loop import evaluate, train
from .plots import plot_loss_curves

EOT = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "tiny"

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vocab_size": 4096, "block_size": 256, "holdout": 0.05, "store_dtype": "bfloat16",
        "target": {
            "model": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, tie_embeddings=True, dropout=0.1),
            "train": dict(max_steps=360, batch_size=8, lr=3e-3, min_lr_ratio=0.1, warmup_steps=20,
                          weight_decay=0.1, eval_every=40, grad_clip=1.0),
        },
        "draft": {
            "model": dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, tie_embeddings=True, dropout=0.1),
            "train": dict(max_steps=400, batch_size=8, lr=3e-3, min_lr_ratio=0.1, warmup_steps=20,
                          weight_decay=0.1, eval_every=50, grad_clip=1.0),
        },
    },
    # seconds, for tests of the pipeline itself; the numbers it produces mean nothing
    "smoke": {
        "vocab_size": 512, "block_size": 64, "holdout": 0.05, "store_dtype": "bfloat16",
        "target": {"model": dict(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2),
                   "train": dict(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=0,
                                 eval_batches=2)},
        "draft": {"model": dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1),
                  "train": dict(max_steps=2, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=0,
                                eval_batches=2)},
    },
}


def split_corpus(*, holdout: float, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """``pydoc_data.topics`` as ``(train, heldout)`` dicts of whole topics; held-out topics are drawn in a
    seeded order until they hold ``holdout`` of the characters."""
    from pydoc_data.topics import topics

    if not 0.0 < holdout < 0.5:
        raise ValueError(f"holdout must be in (0, 0.5), got {holdout}")
    keys = sorted(topics)
    order = keys[:]
    random.Random(seed).shuffle(order)
    total = sum(len(topics[k]) for k in keys)
    held: set[str] = set()
    size = 0
    for key in order:
        if size >= holdout * total:
            break
        held.add(key)
        size += len(topics[key])
    train_part = {k: topics[k] for k in keys if k not in held}
    held_part = {k: topics[k] for k in keys if k in held}
    return train_part, held_part


def _blocks(texts: dict[str, str], tokenizer, block_size: int) -> dict[str, torch.Tensor]:
    import datasets

    ds = datasets.Dataset.from_dict({"text": list(texts.values())})
    return tokenize_and_pack(ds, tokenizer.encode_ordinary, block_size,
                             separator_id=tokenizer.special_tokens[EOT])


def _train_one(kind: str, spec: dict[str, Any], *, vocab_size: int, block_size: int, seed: int,
               train_data, eval_data, out: Path, store_dtype: str, progress: bool,
               work_dir: Path | None, eos_token_id: int, resume: bool = False
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    from mlcore.model import Transformer, TransformerConfig

    model_cfg = TransformerConfig(vocab_size=vocab_size, max_seq_len=block_size, **spec["model"])
    train_cfg = TrainConfig(seed=seed, cpu=True, progress=progress, mixed_precision="no",
                            out_dir=str(work_dir / kind) if work_dir else None,
                            checkpoint_every=spec["train"]["max_steps"] // 2 if work_dir else 0,
                            **spec["train"])
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without changing the caller's RNG state
        torch.manual_seed(seed)
        model = Transformer(model_cfg)
    n_params = model.num_parameters()
    resume_from = None
    if resume and work_dir is not None and latest_checkpoint(work_dir / kind) is not None:
        resume_from = "latest"
    result = train(model, train_data, train_cfg, eval_data=eval_data, resume_from=resume_from,
                   description=f"{kind} ({n_params / 1e6:.2f}M)")
    eval_kwargs = dict(batch_size=train_cfg.eval_batch_size or train_cfg.batch_size, max_batches=train_cfg.eval_batches)
    fp32_eval = evaluate(model, eval_data, **eval_kwargs)

    folder = out / kind
    stored = copy.deepcopy(model).to(getattr(torch, store_dtype))
    stored.save_pretrained(folder)
    _name_special_ids(folder / "config.json", eos_token_id=eos_token_id)
    reloaded = Transformer.from_pretrained(folder)
    stored_eval = evaluate(reloaded, eval_data, **eval_kwargs)
    log = {
        "parameters": n_params,
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "train_seconds": round(result.seconds, 1),
        "train_tokens": result.total_tokens,  # the whole run, steps before a resume included
        "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
        "heldout_loss_fp32": fp32_eval["loss"],
        "heldout_perplexity_fp32": fp32_eval["perplexity"],
        "store_dtype": store_dtype,
        "heldout_loss": stored_eval["loss"],
        "heldout_perplexity": stored_eval["perplexity"],
        "checkpoint_bytes": (folder / "model.safetensors").stat().st_size,
        "history": result.history,
        "evals": result.evals,
    }
    return log, result.to_dict()


def pretrain(preset: str = "tiny", *, out: str | Path = DEFAULT_OUT, seed: int = 0, kinds=("target", "draft"),
             progress: bool = True, work_dir: str | Path | None = None, resume: bool = False,
             command: str | None = None) -> dict[str, Any]:
    """Run the whole recipe (module doc) and return the log that is also written to ``train_log.json``."""
    from mlcore.tokenizer import BPETokenizer

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    train_texts, held_texts = split_corpus(holdout=p["holdout"], seed=seed)
    t0 = time.perf_counter()
    tokenizer = BPETokenizer.train("\n\n".join(train_texts.values()), p["vocab_size"], special_tokens=[EOT])
    tokenizer_seconds = time.perf_counter() - t0
    tokenizer.save(out / "tokenizer.bpe")
    # tokenizer.json + tokenizer_config.json: AutoTokenizer then knows the EOS token and the context length
    tokenizer.save_pretrained(out, eos_token=EOT, model_max_length=p["block_size"])
    train_data = _blocks(train_texts, tokenizer, p["block_size"])
    eval_data = _blocks(held_texts, tokenizer, p["block_size"])

    log: dict[str, Any] = {
        "preset": preset, "seed": seed, "command": command,
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "corpus": "pydoc_data.topics", "heldout_topics": sorted(held_texts),
        "train_tokens_per_epoch": train_data["input_ids"].numel(), "heldout_tokens": eval_data["input_ids"].numel(),
        "block_size": p["block_size"], "tokenizer": {"vocab_size": tokenizer.vocab_size,
                                                     "train_seconds": round(tokenizer_seconds, 2)},
    }
    curves = {}
    for kind in kinds:
        log[kind], curves[kind] = _train_one(
            kind, p[kind], vocab_size=p["vocab_size"], block_size=p["block_size"], seed=seed,
            train_data=train_data, eval_data=eval_data, out=out, store_dtype=p["store_dtype"], progress=progress,
            work_dir=Path(work_dir) if work_dir else None, eos_token_id=tokenizer.special_tokens[EOT], resume=resume)
        print(f"{kind}: {log[kind]['parameters'] / 1e6:.2f}M params, {log[kind]['train_seconds']:.0f} s, "
              f"held-out perplexity {log[kind]['heldout_perplexity']:.2f} ({p['store_dtype']} weights; "
              f"{log[kind]['heldout_perplexity_fp32']:.2f} in fp32), "
              f"{log[kind]['checkpoint_bytes'] / 1e6:.2f} MB", flush=True)
    log["total_seconds"] = round(time.perf_counter() - started, 1)
    plot_loss_curves(curves, out / "loss_curve.png", title=f"mlcore {preset} models on pydoc_data.topics")
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    if command:
        (out / "COMMAND.txt").write_text(
            f"{command}\n\n# seed {seed}; python {log['python']}, torch {log['torch']}, "
            f"{log['threads']} threads; total {log['total_seconds']:.0f} s\n")
    return log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the artefacts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("target", "draft"), default=None, help="train just one of the two")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--work-dir", type=Path, default=None, help="write resumable checkpoints here")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --work-dir")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m mlcore.training.pretrain " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    kinds = (args.only,) if args.only else ("target", "draft")
    pretrain(args.preset, out=args.out, seed=args.seed, kinds=kinds, progress=not args.no_progress,
             work_dir=args.work_dir, resume=args.resume, command=command)


if __name__ == "__main__":
    main()


def _name_special_ids(config_file: Path, *, eos_token_id: int) -> None:
    """Write the tokenizer's end-of-text id into the HF config (no BOS: the models were trained without one).

    Without them ``AutoModelForCausalLM.from_pretrained`` falls back to LlamaConfig's defaults (bos 1, eos 2), and
    transformers' ``generate`` on the folder would stop on token 2 instead of ``<|endoftext|>``."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(bos_token_id=None, eos_token_id=int(eos_token_id))
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

