"""LoRA instruction tuning beyond one process: the same ``mlcore.training.train`` call, data parallel (DDP)
through Hugging Face ``accelerate``. No home-made distribution: accelerate starts the process group (gloo on
CPU, NCCL on GPUs), wraps the model in ``DistributedDataParallel`` and all-reduces the gradients.

    # two processes on one CPU machine (gloo); on a GPU machine drop --cpu to use NCCL
    accelerate launch --multi_gpu --num_processes 2 -m mlcore.finetune.distributed --cpu --out runs/ddp
    # the same with torch's own launcher
    torchrun --nproc_per_node 2 -m mlcore.finetune.distributed --cpu --out runs/ddp

(In accelerate 1.x, ``accelerate launch --cpu --num_processes 2`` starts one process unless MPI is set up;
``--multi_gpu`` selects its torchrun launcher, which works on CPU-only machines too.)

``batch_size`` is the global batch: each of the N processes trains on its ``batch_size / N`` rows of it, and the
loop scales the loss so that the all-reduced gradient equals the one-process gradient on the whole batch
(``mlcore.training.loop``). After a few steps the loss and the adapter weights therefore agree with a single
process run to float rounding, which ``tests/finetune/test_distributed.py`` checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlcore.finetune.adapter_io import save_adapter
from mlcore.finetune.config import LoraConfig
from mlcore.finetune.inject import apply_lora
from mlcore.finetune.sft import sft_dataset
from mlcore.finetune.sft_run import pii_sft_records
from mlcore.training import TrainConfig, train

RESULT_FILE = "result.json"


def small_decoder(seed: int = 0) -> nn.Module:
    """A 1-layer, 64-wide decoder over the tiny BPE vocabulary (4096), seeded: fast enough for tests."""
    from mlcore.model import Transformer, TransformerConfig

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        return Transformer(TransformerConfig(vocab_size=4096, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2,
                                             max_seq_len=192))


def run_lora_sft(out_dir: str | Path, *, model: str = "tiny-target", n_records: int = 64, steps: int = 4,
                 batch_size: int = 8, grad_accum_steps: int = 1, lr: float = 2e-3, r: int = 8,
                 lora_alpha: float = 16.0, max_length: int = 192, seed: int = 0, cpu: bool = True) -> dict[str, Any]:
    """LoRA SFT on the PII-masking records with ``train``; one process or many (whatever launched us).

    ``model``: "tiny-target" (the project's trained decoder) or "small" (:func:`small_decoder`). The main
    process writes ``result.json`` (loss history, world size) and the adapter (PEFT format) to ``out_dir``.
    """
    from accelerate.state import AcceleratorState, PartialState

    from mlcore.training import load_tiny
    from mlcore.training.assets import load_tiny_tokenizer

    if model == "tiny-target":
        net, tokenizer = load_tiny("target")
    elif model == "small":
        net, tokenizer = small_decoder(seed), load_tiny_tokenizer()
    else:
        raise ValueError(f"model must be 'tiny-target' or 'small', got {model!r}")
    data = sft_dataset(pii_sft_records(n_records, seed=seed), tokenizer, max_length=max_length)
    apply_lora(net, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules="all-linear"),
               generator=torch.Generator().manual_seed(seed), verbose=False)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, grad_accum_steps=grad_accum_steps, lr=lr,
                      warmup_steps=0, weight_decay=0.0, seed=seed, cpu=cpu, mixed_precision="no", progress=False)
    result = train(net, data, cfg, description="LoRA SFT (DDP)")
    state = PartialState()
    summary = {"world_size": state.num_processes, "history": result.history, "steps": result.steps,
               "seconds": result.seconds, "backend": str(getattr(state, "backend", None))}
    if state.is_main_process:
        out = Path(out_dir)
        save_adapter(net, out / "adapter")
        (out / RESULT_FILE).write_text(json.dumps(summary, indent=1))
    state.wait_for_everyone()
    AcceleratorState._reset_state(True)  # leave no process-group state behind for a later run in this process
    return summary


def fork_worker(out_dir: str, kwargs: dict[str, Any]) -> None:
    """Entry point for ``accelerate.debug_launcher`` (forked processes): clear accelerate's singletons the
    parent may hold, then :func:`run_lora_sft`."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    run_lora_sft(out_dir, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcore.finetune.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for result.json and the adapter")
    parser.add_argument("--model", default="tiny-target", choices=["tiny-target", "small"])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split across processes)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="train on CPU (gloo) even where a GPU is present")
    args = parser.parse_args(argv)
    summary = run_lora_sft(args.out, model=args.model, n_records=args.records, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
                           cpu=args.cpu)
    print(json.dumps({"world_size": summary["world_size"], "losses": [h["loss"] for h in summary["history"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
