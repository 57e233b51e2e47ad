"""A real fine-tuning run: pretrained all-MiniLM-L6-v2 + a mean-pooling classification head on the synthetic
card-issuer intents (``intent_data.py``), trained three ways and compared on the held-out templates.

- ``full``: every weight trains (AdamW moments for all 22M parameters);
- ``lora``: the encoder is frozen; LoRA (Hu et al. 2021) on every linear layer of the encoder
  (``target_modules="all-linear"``), the head trained in full (``modules_to_save=["head"]``);
- ``qlora``: the same LoRA over encoder linear layers stored in NF4 with double quantization
  (Dettmers et al. 2023), with gradient checkpointing of the encoder.

Each run reports held-out accuracy and macro-F1 (scikit-learn), trainable parameters, peak training memory
and the median time per step; the ``full`` run also keeps ``ΔW = W_after - W_before`` of the attention
query / value weights, whose singular values show why a low-rank update suffices.

The loop is a plain PyTorch one (AdamW, warm-up + cosine, clipping at 1.0, batches drawn as
``mlcore.training.batch_indices``): the classification loss is not the next-token loss of
``mlcore.training.train``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcore.finetune.config import LoraConfig
from mlcore.finetune.encoder_classifier import EncoderClassifier, load_minilm_classifier
from mlcore.finetune.inject import apply_lora, trainable_parameters
from mlcore.finetune.intent_data import IntentExample, IntentSplits
from mlcore.finetune.measure import model_bytes, peak_training_bytes, quantized_base_bytes
from mlcore.finetune.qlora import prepare_qlora
from mlcore.training.data import batch_indices
from mlcore.training.schedule import cosine_with_warmup

METHODS = ("full", "lora", "qlora")
DELTA_PATTERN = ("attention.self.query.weight", "attention.self.value.weight")


@dataclass
class IntentRunConfig:
    """Hyper-parameters of one run. ``lr`` is the learning rate of the encoder's trainable weights (full
    weights or LoRA's A and B; the usual 5e-5 for full fine-tuning, 1e-3 for LoRA); ``head_lr`` that of the
    fresh classification head."""

    method: str = "lora"
    steps: int = 150
    batch_size: int = 16
    max_length: int = 48
    lr: float | None = None  # None: 5e-5 (full) or 1e-3 (lora, qlora)
    head_lr: float = 2e-3
    r: int = 8
    lora_alpha: float = 16.0
    weight_decay: float = 0.01
    warmup_steps: int = 10
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None: on for qlora only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"IntentRunConfig.method must be one of {METHODS}, got {self.method!r}")
        for name in ("steps", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"IntentRunConfig.{name} must be a positive int, got {value!r}")
        if self.lr is None:
            self.lr = 5e-5 if self.method == "full" else 1e-3


@dataclass
class IntentRunResult:
    """What one run measured (``n_train`` / ``n_test``: split sizes; ``peak_train_bytes``: see ``measure.py``)."""

    method: str
    accuracy: float
    macro_f1: float
    trainable_params: int
    total_params: int
    peak_train_bytes: int
    model_bytes: int
    step_seconds: float
    steps: int
    n_train: int
    n_test: int
    losses: list[float] = field(default_factory=list)
    base_bytes_per_param: float | None = None
    deltas: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The table row of this run (no tensors)."""
        return {"method": self.method, "accuracy": round(self.accuracy, 4), "macro_f1": round(self.macro_f1, 4),
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "peak_train_MB": round(self.peak_train_bytes / 2**20, 1),
                "step_ms": round(1e3 * self.step_seconds, 1), "steps": self.steps,
                "n_train": self.n_train, "n_test": self.n_test}


def prepare_model(method: str, num_labels: int, *, r: int = 8, lora_alpha: float = 16.0, seed: int = 0,
                  gradient_checkpointing: bool = False) -> tuple[EncoderClassifier, Any]:
    """MiniLM + head, made ready for ``method`` ("full", "lora" or "qlora"); A is seeded by ``seed``."""
    model, tokenizer = load_minilm_classifier(num_labels, seed=seed)
    if gradient_checkpointing:  # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias)
        enable = getattr(model.encoder, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules="all-linear", modules_to_save=["head"])
    gen = torch.Generator().manual_seed(seed + 1)
    if method == "lora":
        apply_lora(model, config, generator=gen, verbose=False)
    elif method == "qlora":
        prepare_qlora(model, config, generator=gen, verbose=False)
    elif method != "full":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return model, tokenizer


def encode(tokenizer: Any, split: list[IntentExample], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize a split: ``input_ids`` / ``attention_mask`` (N, max_length) and ``labels`` (N,)."""
    enc = tokenizer([e.text for e in split], padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([e.label for e in split])}


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the batch's columns of padding beyond its longest row (cheaper steps, same result)."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}


@torch.no_grad()
def predict(model: nn.Module, data: dict[str, torch.Tensor], *, batch_size: int = 64) -> torch.Tensor:
    """Predicted labels (N,)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, data["input_ids"].size(0), batch_size):
        b = _trim({k: v[s:s + batch_size].to(device) for k, v in data.items()})
        out.append(model(b["input_ids"], b["attention_mask"]).argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out)


def _optimizer(model: EncoderClassifier, cfg: IntentRunConfig) -> torch.optim.AdamW:
    head = [p for p in model.head.parameters() if p.requires_grad]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    groups = [{"params": body, "lr": cfg.lr, "base_lr": cfg.lr},
              {"params": head, "lr": cfg.head_lr, "base_lr": cfg.head_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def run_intent(splits: IntentSplits, cfg: IntentRunConfig, *, device: torch.device | str = "cpu",
               keep_deltas: bool = False) -> IntentRunResult:
    """Fine-tune MiniLM on ``splits.train`` with ``cfg.method`` and score it on ``splits.test``."""
    from sklearn.metrics import accuracy_score, f1_score

    device = torch.device(device)
    ckpt = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cfg.method == "qlora"
    model, tokenizer = prepare_model(cfg.method, len(splits.intents), r=cfg.r, lora_alpha=cfg.lora_alpha,
                                     seed=cfg.seed, gradient_checkpointing=ckpt)
    model.to(device).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(DELTA_PATTERN)} \
        if keep_deltas else {}
    train_data, test_data = encode(tokenizer, splits.train, cfg.max_length), encode(tokenizer, splits.test,
                                                                                     cfg.max_length)
    optimizer = _optimizer(model, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses: list[float] = []
    times: list[float] = []

    def step(i: int) -> None:
        f = cosine_with_warmup(i, warmup_steps=min(cfg.warmup_steps, cfg.steps), total_steps=cfg.steps)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        idx = batch_indices(len(splits.train), cfg.batch_size, i, seed=cfg.seed)
        b = _trim({k: v[idx].to(device) for k, v in train_data.items()})
        loss = F.cross_entropy(model(b["input_ids"], b["attention_mask"]).float(), b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    peak = peak_training_bytes(model, lambda: step(0), device)  # step 0, measured from a clean state
    for i in range(1, cfg.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    pred = predict(model, test_data).numpy()
    gold = test_data["labels"].numpy()
    trainable, total = trainable_parameters(model)
    qbytes, qparams = quantized_base_bytes(model)
    deltas = {n: (p.detach() - before[n]).cpu() for n, p in model.named_parameters() if n in before}
    return IntentRunResult(
        cfg.method, float(accuracy_score(gold, pred)), float(f1_score(gold, pred, average="macro")),
        trainable, total, peak, model_bytes(model),
        float(torch.tensor(times).median()) if times else float("nan"), cfg.steps,
        len(splits.train), len(splits.test), losses, qbytes / qparams if qparams else None, deltas)


def compare_methods(splits: IntentSplits, *, methods: tuple[str, ...] = METHODS, device: torch.device | str = "cpu",
                    keep_deltas: bool = True, **overrides: Any) -> list[IntentRunResult]:
    """One :func:`run_intent` per method with the same data, seed and step budget (``overrides`` go to
    :class:`IntentRunConfig`); the ``full`` run keeps its weight updates when ``keep_deltas``."""
    return [run_intent(splits, IntentRunConfig(method=m, **overrides), device=device,
                       keep_deltas=keep_deltas and m == "full") for m in methods]
