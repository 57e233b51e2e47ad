"""Peak resident memory of ``Transformer.from_pretrained`` per mode, each measured in a fresh process.

    python tests/model/_memory_probe.py DIR MODE [MODE ...]    # prints one JSON line per mode
    python tests/model/_memory_probe.py --make DIR             # writes the 27M Llama config to DIR first

Modes: ``fp32`` / ``bf16`` (streamed), ``int8`` / ``int4`` / ``nf4`` / ``fp4`` (quantized while streaming),
``fp32+nf4`` (streamed fp32, then ``quantize_model``: load-then-quantize) and ``eager`` (the whole state dict
read with ``safetensors.torch.load_file`` into a randomly initialised model: what loading did before streaming).

Peak = ``VmHWM`` (peak resident size, reset before each mode through ``/proc/self/clear_refs``) after the load
minus the resident size just before it (imports done); ``final`` = resident size after the load minus the same
baseline; ``model_mb`` = bytes of the model's parameters and buffers. Linux only (``/proc``). Where the peak
cannot be reset, modes share one high-water mark: list the smallest first.

The probe re-runs itself with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every block of 64 KiB or more
with its own mapping and returns it on free. With its default, adaptive threshold, freed temporaries stay in the
heap in amounts that vary from run to run (measured 21-145 MB of retention for the same int8 load), which would
measure the allocator rather than the loader.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import warnings


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    """VmHWM: this process's peak resident size. (``ru_maxrss`` would do in a fresh interpreter, but Linux
    carries a parent's maximum across fork and exec, so under pytest it reports pytest's own peak.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0), so that each mode gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load(folder: str, mode: str):
    import torch
    from safetensors.torch import load_file

    from mlcore.model import Transformer
    from mlcore.model.hf_convert import config_from_hf
    from mlcore.model.hf_weights import state_dict_from_hf
    from mlcore.quant import quantize_model

    if mode in ("fp32", "bf16"):
        return Transformer.from_pretrained(folder, dtype=torch.float32 if mode == "fp32" else torch.bfloat16)
    if mode == "fp32+nf4":
        return quantize_model(Transformer.from_pretrained(folder), "nf4")
    if mode == "eager":
        config = config_from_hf(json.load(open(f"{folder}/config.json")))
        model = Transformer(config)
        sd = state_dict_from_hf(load_file(f"{folder}/model.safetensors"), "llama", tie_embeddings=True)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(sd[name])
        return model
    return Transformer.from_pretrained(folder, quantize=mode)


def measure(folder: str, mode: str) -> dict[str, float | str]:
    gc.collect()
    _reset_peak()
    base = _rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _load(folder, mode)
    peak, final = _peak_mb() - base, _rss_mb() - base
    nbytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in
                 list(model.parameters()) + list(model.buffers())}.values())
    del model
    gc.collect()
    return {"mode": mode, "peak_mb": round(peak, 1), "final_mb": round(final, 1),
            "model_mb": round(nbytes / 2**20, 1)}


def main(argv: list[str]) -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, __file__, *argv], env)
    import torch  # noqa: F401  (imports done before the baseline)

    from mlcore.model import Transformer, TransformerConfig

    if argv[0] == "--make":
        config = TransformerConfig(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                                   max_seq_len=512)
        Transformer(config).save_pretrained(argv[1])
        return
    from mlcore.model.streaming import build_on_meta
    from mlcore.quant import quantize

    build_on_meta(Transformer, TransformerConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2))  # warm-up:
    for scheme in ("int8", "int4", "nf4"):  # lazy imports and first-call buffers are not the load's memory
        quantize(torch.randn(256, 256), scheme)
    for mode in argv[1:]:
        print(json.dumps(measure(argv[0], mode)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
