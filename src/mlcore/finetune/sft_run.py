"""A real instruction-tuning run: the project's trained decoder (``load_tiny("target")``) learns, with LoRA, to
rewrite a customer message with its personal data masked.

The SFT set is generated here and is **synthetic**: card-issuer messages from ``intent_data`` with a piece of
PII appended (a Faker e-mail address, card number, IBAN, phone number), and as the target the same message
masked by ``mlcore.privacy.mask_pii`` (``[EMAIL]``, ``[CARD]``, ...). Training goes through
``mlcore.training.train`` with the prompt masked out of the loss (``sft.py``).

After training the run checks the three ways an adapter leaves the lab (``check_exports``):

1. merged: ``merge_lora`` folds ``W0 + (alpha / r) B A`` into the weights: same logits as the unmerged model;
2. reloaded: the merged model saved with ``save_pretrained`` and read back with ``Transformer.from_pretrained``;
3. PEFT: the adapter saved in PEFT's format under the HF module names (``save_adapter(..., hf_names=True)``)
   and loaded by ``peft.PeftModel.from_pretrained`` onto ``base.to_hf()``, a transformers ``LlamaForCausalLM``.
"""

from __future__ import annotations

import copy
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlcore.finetune.adapter_io import save_adapter
from mlcore.finetune.config import LoraConfig
from mlcore.finetune.inject import apply_lora, merge_lora, trainable_parameters
from mlcore.finetune.intent_data import generate, template_split
from mlcore.finetune.sft import ALPACA, eos_id_of, sft_dataset, text_encoder
from mlcore.training import TrainConfig, evaluate, train

INSTRUCTION = "Rewrite the message with its personal data masked."
PII_PHRASES = ("My email is {email}.", "Card number {card}.", "You can mail me at {email}.",
               "Charge it to {card}.", "My IBAN is {iban}.", "Reach me at {email} please.")


def pii_sft_records(n: int, *, seed: int = 0, heldout: bool = False) -> list[dict[str, str]]:
    """``n`` synthetic records ``{"instruction", "input", "response"}``: a message with PII and its masked form.

    ``heldout`` draws the messages from the intent templates held out of training (``intent_data``).
    Messages whose PII ``mask_pii`` does not catch are skipped, so each target differs from its input.
    """
    from faker import Faker

    from mlcore.privacy import mask_pii
    from mlcore.privacy.evaluation.synthetic import SyntheticPii

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    train_t, test_t = template_split(3)
    fake, rng, pii = Faker(), random.Random(seed), SyntheticPii(seed)
    fake.seed_instance(seed)
    out: list[dict[str, str]] = []
    batch = 0
    while len(out) < n:
        for msg in generate(max(2 * n, 24), test_t if heldout else train_t, seed=seed * 1000 + batch):
            values = {"email": fake.email(), "card": pii.card(), "iban": pii.iban()}
            text = msg.text + " " + rng.choice(PII_PHRASES).format(**values)
            masked = mask_pii(text)
            if masked != text:
                out.append({"instruction": INSTRUCTION, "input": text, "response": masked})
            if len(out) == n:
                break
        batch += 1
    return out


def respond(model: nn.Module, tokenizer: Any, record: dict[str, str], *, max_new_tokens: int = 64) -> str:
    """The model's greedy answer to ``record``'s prompt (``mlcore.inference.generate``), up to the eos token."""
    from mlcore.inference import generate as generate_tokens

    prompt = ALPACA.prompt(record["instruction"], record.get("input"))
    ids = torch.tensor([text_encoder(tokenizer)(prompt)], device=next(model.parameters()).device)
    eos = eos_id_of(tokenizer)
    was_training = model.training
    model.eval()
    out = generate_tokens(model, ids, max_new_tokens=max_new_tokens, eos_token_id=eos)[0, ids.size(1):].tolist()
    model.train(was_training)
    return tokenizer.decode([t for t in out if t != eos])


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return (out if isinstance(out, torch.Tensor) else out.logits).float()


def check_exports(model: nn.Module, base: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Max |logit difference| to the LoRA ``model`` of: PEFT's LoRA on ``base.to_hf()`` with our adapter,
    the merged model, and the merged model after ``save_pretrained`` / ``from_pretrained``; and, for scale,
    of the base model (``lora_effect_max_abs``). ``base`` is the model before LoRA; ``model`` is merged
    (unload) at the end."""
    import warnings

    from peft import PeftModel

    from mlcore.model import Transformer

    model.eval()
    reference = _logits(model, ids)
    out = {"lora_effect_max_abs": float((_logits(base, ids) - reference).abs().max())}
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, Path(tmp) / "adapter", hf_names=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = PeftModel.from_pretrained(base.to_hf().eval(), Path(tmp) / "adapter")
        out["peft_max_abs_diff"] = float((_logits(peft_model, ids) - reference).abs().max())
        merge_lora(model, unload=True)
        out["merged_max_abs_diff"] = float((_logits(model, ids) - reference).abs().max())
        model.save_pretrained(Path(tmp) / "merged")
        reloaded = Transformer.from_pretrained(Path(tmp) / "merged").eval()
        out["reloaded_max_abs_diff"] = float((_logits(reloaded, ids) - reference).abs().max())
    return out


@dataclass
class SftRunResult:
    """Losses, held-out loss before / after, generations before / after, and the export checks."""

    history: list[dict[str, float]]
    eval_before: float
    eval_after: float
    generations: list[dict[str, str]]
    exports: dict[str, float]
    trainable_params: int
    total_params: int
    n_train: int
    n_eval: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_pii_sft(*, n_train: int = 400, n_eval: int = 64, steps: int = 200, batch_size: int = 16,
                lr: float = 2e-3, r: int = 16, lora_alpha: float = 32.0, max_length: int = 192, seed: int = 0,
                n_generate: int = 3, max_new_tokens: int = 64, model: nn.Module | None = None,
                tokenizer: Any = None) -> SftRunResult:
    """LoRA instruction tuning of the tiny target on the PII-masking task; see the module docstring.

    ``model`` / ``tokenizer`` default to ``load_tiny("target")``. Eval records come from held-out templates.
    """
    if model is None or tokenizer is None:
        from mlcore.training import load_tiny

        model, tokenizer = load_tiny("target")
    base = copy.deepcopy(model)
    train_records = pii_sft_records(n_train, seed=seed)
    eval_records = pii_sft_records(n_eval, seed=seed + 1, heldout=True)
    train_data = sft_dataset(train_records, tokenizer, max_length=max_length)
    eval_data = sft_dataset(eval_records, tokenizer, max_length=max_length)
    shown = eval_records[:n_generate]
    before = [respond(model, tokenizer, rec, max_new_tokens=max_new_tokens) for rec in shown]
    eval_before = evaluate(model, eval_data, batch_size=batch_size)["loss"]
    apply_lora(model, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules="all-linear"),
               generator=torch.Generator().manual_seed(seed), verbose=False)
    trainable, total = trainable_parameters(model)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(10, steps // 5),
                      weight_decay=0.0,
                      seed=seed, cpu=not torch.cuda.is_available(), progress=False, log_every=1)
    result = train(model, train_data, cfg, description="LoRA SFT")
    eval_after = evaluate(model, eval_data, batch_size=batch_size)["loss"]
    after = [respond(model, tokenizer, rec, max_new_tokens=max_new_tokens) for rec in shown]
    generations = [{"input": rec["input"], "target": rec["response"], "before": b, "after": a}
                   for rec, b, a in zip(shown, before, after)]
    exports = check_exports(model, base, train_data["input_ids"][:2, :48].to(next(model.parameters()).device))
    return SftRunResult(result.history, eval_before, eval_after, generations, exports, trainable, total,
                        len(train_records), len(eval_records), result.seconds)
