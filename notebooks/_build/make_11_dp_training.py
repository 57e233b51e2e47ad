"""Writes notebooks/11_dp_training.ipynb (outputs cleared). Run: .venv/bin/python notebooks/_build/make_11_dp_training.py"""


from nbbuild import NotebookBuilder

builder = NotebookBuilder("11_dp_training")
md, code = builder.md, builder.code


md(r"""
# 11 · Differentially private training: DP-SGD, its accountant, and what it buys

*"How do you stop a model from memorising customer data?"* Notebook 08 measured memorisation (canary exposure)
and removed PII before training (masking). Masking only removes what a detector recognises; **differential
privacy** bounds what the model can learn about *any* single training example, recognised or not.

A training algorithm M is **(epsilon, delta)-differentially private** if for any two datasets D, D' that differ in
one example and any set S of outcomes: `P[M(D) in S] <= e^epsilon P[M(D') in S] + delta`. DP-SGD (Abadi et al.
2016) gets there by (1) sampling each batch by Poisson sampling at rate q, (2) computing every example's own
gradient, (3) clipping each to norm C, (4) adding Gaussian noise of std sigma*C to their sum. An accountant adds up
the privacy loss of the steps. Everything below runs `mlcore.training.dp` and checks it against **Opacus**.

1. per-example gradients (torch.func, and the Linear outer product) against Opacus;
2. clipping and noise;
3. the epsilon arithmetic, worked out for a bank-sized dataset;
4. DP-SGD in mlcore's training loop, and the privacy-utility curve on the project's tiny model with canaries;
5. Opacus side by side;
6. DP training, masking, or both?
""")

code(r"""
import math
import os
import random
import time
import warnings

import matplotlib.pyplot as plt
import torch

from mlcore.model import Transformer, TransformerConfig
from mlcore.training.dp import clip_and_sum, epsilon, noise_multiplier_for, per_sample_grads, sequence_loss
from mlcore.training.loss import causal_lm_labels

QUICK = bool(os.environ.get("MLCORE_QUICK"))
warnings.filterwarnings("ignore", message=".*(Optimal order|Full backward hook|Secure RNG).*")
print("quick mode" if QUICK else "full mode")
""")

md(r"""
## 1. Per-example gradients

Clipping needs each example's gradient, not their sum. `per_sample_grads` runs `vmap(grad(loss_of_one_example))`:
`grad` differentiates the loss of *one* example, `vmap` runs it for every row at once. We check it on a tiny
Llama-style decoder (embedding, RMSNorm, rotary attention, SwiGLU, tied head) against the definition (one
backward pass per example) and against Opacus' `GradSampleModule`.
""")

code(r"""
from opacus import GradSampleModule

with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=32)).double()
ids = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(1))
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": causal_lm_labels(ids)}

t0 = time.perf_counter()
ours, _ = per_sample_grads(model, batch, sequence_loss)            # {name: (B, *shape)}
print(f"vmap/grad: {len(ours)} tensors in {time.perf_counter() - t0:.2f}s; embed grads {tuple(ours['embed.weight'].shape)}")

# the definition: one backward pass per example
params = dict(model.named_parameters())
naive = {n: [] for n in params}
for i in range(6):
    row = {k: v[i:i + 1] for k, v in batch.items()}
    grads = torch.autograd.grad(sequence_loss(model(row["input_ids"]), row)[0], list(params.values()))
    for n, g in zip(params, grads):
        naive[n].append(g)
err_naive = max(float((ours[n] - torch.stack(naive[n])).abs().max()) for n in params)

gsm = GradSampleModule(model, loss_reduction="sum")
logits = gsm(ids)
sum(sequence_loss(logits[i:i + 1], {"labels": batch["labels"][i:i + 1]})[0] for i in range(6)).backward()
err_opacus = max(float((ours[n] - p.grad_sample).abs().max()) for n, p in model.named_parameters())
gsm._close()
print(f"max |ours - naive loop| = {err_naive:.1e}   max |ours - Opacus| = {err_opacus:.1e}")
""")

md(r"""
For a linear layer `y = x W^T` applied at every position t, the per-example gradient is a sum of outer products,
`dL_b/dW = sum_t g_{b,t} x_{b,t}^T` with `g = dL/dy`: both factors exist after one ordinary backward pass
(Goodfellow 2015). `linear_per_sample_grads` writes it out; `LinearGradSampler` collects it with hooks.
""")

code(r"""
from mlcore.training.dp import LinearGradSampler

model.zero_grad()
with LinearGradSampler(model) as sampler:
    logits = model(ids)
    sum(sequence_loss(logits[i:i + 1], {"labels": batch["labels"][i:i + 1]})[0] for i in range(6)).backward()
name = "layers.0.mlp.down_proj.weight"
print(name, tuple(sampler.grads[name].shape), "max |outer product - vmap| =",
      f"{float((sampler.grads[name] - ours[name]).abs().max()):.1e}")
""")

md(r"""
## 2. Clip, sum, add noise once

Each example's gradient (all parameters together) is scaled by `min(1, C / ||g_i||)`, so one example moves the
sum by at most C: the **sensitivity**. Gaussian noise of std `sigma*C` on the sum then hides any one example. The
sum is divided by the *expected* batch size `qN` (the realised size would itself leak). A batch too big for memory
is processed in chunks whose clipped sums add up; the noise is added once, after the last chunk.
""")

code(r"""
summed, norms = clip_and_sum(ours, max_grad_norm=0.5)
print("per-example norms before clipping:", [round(float(x), 3) for x in norms])
total = torch.cat([s.flatten() for s in summed.values()]).norm()
print(f"norm of the clipped sum {float(total):.3f} <= B*C = {6 * 0.5}")
sigma, C = 1.0, 0.5
noise_norm = sigma * C * math.sqrt(sum(s.numel() for s in summed.values()))
print(f"expected norm of the noise sigma*C*sqrt(#params) = {noise_norm:.1f}: per step, noise dwarfs one batch's signal;"
      " it averages out over many steps and large batches")
""")

md(r"""
## 3. The epsilon arithmetic

The **RDP accountant** (Mironov et al. 2019) tracks the Renyi divergence of each order alpha; T steps cost T
times one step's, and the conversion of Balle et al. (2020) turns it into (epsilon, delta):
`epsilon = min_alpha  T*RDP(alpha) + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha-1)`.

Worked example: a bank trains on **N = 100,000 customer conversations**, batches of 256 (q = 0.00256), 3 epochs
(T = 3/q = 1,171 steps), delta = 1e-5 (below 1/N, the usual rule: a larger delta would allow leaking one record
outright). Which noise gives epsilon = 3, and what do other choices cost?
""")

code(r"""
N, B, epochs, delta = 100_000, 256, 3, 1e-5
q = B / N
T = int(epochs / q)
sigma3 = noise_multiplier_for(3.0, q, T, delta)
print(f"q = {q:.5f}, T = {T} steps: sigma = {sigma3:.3f} gives epsilon = {epsilon(sigma3, q, T, delta):.3f}")
for target in (1.0, 8.0):
    print(f"  epsilon = {target}: sigma = {noise_multiplier_for(target, q, T, delta):.3f}")
print(f"without subsampling (q = 1, the same {T} steps): sigma = {noise_multiplier_for(3.0, 1.0, T, delta):.1f}"
      " -- privacy amplification by sampling is what makes DP-SGD affordable")

from opacus.accountants import RDPAccountant
acc = RDPAccountant()
acc.history = [(sigma3, q, T)]
print(f"Opacus RDPAccountant on the same run: epsilon = {acc.get_epsilon(delta):.6f}")

steps = [10, 30, 100, 300, 1000, 3000, 10000]
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for s in (0.7, 1.0, sigma3, 2.0):
    ax.plot(steps, [epsilon(s, q, t, delta) for t in steps], "o-", ms=3, label=f"sigma = {s:.2f}")
ax.axvline(T, color="gray", ls=":", lw=0.8)
ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("steps"); ax.set_ylabel("epsilon (delta = 1e-5)")
ax.set_title(f"epsilon grows with steps (q = {q:.4f})"); ax.legend(fontsize=8); fig.tight_layout()
""")

md(r"""
Reading it: epsilon grows roughly like sqrt(T) at fixed sigma; doubling the batch (q x 2) at fixed epochs halves
T but doubles q, and costs more epsilon per step, so larger batches with more noise are the usual trade.
An epsilon below about 0.1 is unreachable at delta = 1e-5 with these orders whatever the noise, and
`noise_multiplier_for` says so:
""")

code(r"""
try:
    noise_multiplier_for(0.05, q, T, delta)
except ValueError as err:
    print("ValueError:", err)
""")

md(r"""
## 4. DP-SGD in mlcore's loop, and what it buys

`TrainConfig(dp=True, dp_target_epsilon=..., dp_delta=...)` switches the loop to DP-SGD: Poisson sampling,
per-example clipping, noise, and epsilon in the log. We fine-tune the project's trained tiny decoder on lines of
Python documentation with a **canary** planted 16 times ("my card number is 4556 7375 86.. ...C", from the audit of
notebook 08), then measure its **exposure** (bits; about 1 bit = not memorised, log2|R| = fully memorised) and
the held-out perplexity. Four defences: none (epsilon = inf), DP-SGD at epsilon 1 / 8, DP-LoRA at epsilon 8
(only LoRA adapters see the private data) and `mask_pii` before ordinary training. Quick mode uses tiny sizes
(few steps), so the numbers show the mechanics; `python -m benchmarks dp --preset full` runs the curve at size.
""")

code(r"""
from mlcore.finetune import LoraConfig, apply_lora
from mlcore.privacy import canary_exposure, mask_pii
from mlcore.privacy.audit import card_space, corpus_lines
from mlcore.training import TrainConfig, evaluate, load_tiny, train
from mlcore.training.assets import tiny_heldout_text

_, tok = load_tiny("target")
EOT = tok.special_tokens["<|endoftext|>"]
SEQ = 32 if QUICK else 48
space = card_space(2 if QUICK else 3)
secret = space.sample(1, random.Random(0))[0]
lines = corpus_lines(96 if QUICK else 512, 200, 0) + [space.render(secret)] * 16
random.Random(1).shuffle(lines)


def encode(texts, T):
    ids = torch.full((len(texts), T), EOT)
    mask = torch.zeros((len(texts), T), dtype=torch.long)
    for i, t in enumerate(texts):
        x = tok.encode_ordinary(t)[:T]
        ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
    return {"input_ids": ids, "attention_mask": mask}


held = torch.tensor(tok.encode_ordinary(tiny_heldout_text()[:6_000 if QUICK else 200_000]))
held = {"input_ids": held[: held.numel() // 128 * 128].view(-1, 128)}


@torch.no_grad()
def log_perplexity(model):
    def score(texts):
        b = encode(texts, 24)
        logits = model(b["input_ids"], attention_mask=b["attention_mask"])
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
        return -(lp * b["attention_mask"][:, 1:]).sum(-1)
    return score


def run(defence, eps):
    model = load_tiny("target")[0]
    texts = [mask_pii(t) for t in lines] if defence == "mask_pii" else lines
    if defence == "DP-LoRA":
        apply_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj",
                                                                         "down_proj"]), verbose=False)
    dp = math.isfinite(eps)
    steps, bs = (4, 8) if QUICK else (80, 32)
    res = train(model, encode(texts, SEQ), TrainConfig(
        max_steps=steps, batch_size=bs, lr=5e-3 if defence == "DP-LoRA" else 1e-3, warmup_steps=0, weight_decay=0.0,
        progress=False, cpu=True, mixed_precision="no", log_every=steps, dp=dp, dp_target_epsilon=eps if dp else None,
        dp_delta=1e-5, dp_max_grad_norm=1.0))
    model.eval()
    exposure = canary_exposure(log_perplexity(model), [secret], space, method="exact")[0].exposure
    ppl = evaluate(model, held, batch_size=16)["perplexity"]
    return {"defence": defence, "epsilon": eps, "sigma": res.history[-1].get("noise_multiplier", 0.0),
            "exposure": exposure, "ppl": ppl}


t0 = time.perf_counter()
plan = [("none", math.inf), ("DP-SGD", 8.0), ("DP-SGD", 1.0), ("DP-LoRA", 8.0), ("mask_pii", math.inf)]
rows = [run(d, e) for d, e in plan if not (QUICK and (d, e) == ("DP-SGD", 8.0))]  # quick: 4 runs
print(f"{'defence':10s} {'epsilon':>8s} {'sigma':>6s} {'exposure (bits)':>16s} {'held-out ppl':>13s}")
for r in rows:
    print(f"{r['defence']:10s} {r['epsilon']:8g} {r['sigma']:6.2f} {r['exposure']:16.2f} {r['ppl']:13.2f}")
print(f"log2 |R| = {math.log2(space.size):.1f} bits; {time.perf_counter() - t0:.0f}s")
""")

code(r"""
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for r in rows:
    ax.scatter(r["ppl"], r["exposure"], s=40)
    ax.annotate(f"{r['defence']} eps={r['epsilon']:g}", (r["ppl"], r["exposure"]), fontsize=7,
                xytext=(4, 3), textcoords="offset points")
ax.axhline(math.log2(space.size), color="gray", ls=":", lw=0.8)
ax.set_xlabel("held-out perplexity (lower = more useful)"); ax.set_ylabel("canary exposure (bits)")
ax.set_title("privacy-utility: exposure vs perplexity"); fig.tight_layout()
""")

md(r"""
What to look for (at full size): without a defence the repeated canary's exposure climbs towards log2|R|; DP-SGD
at epsilon 1-8 keeps it near chance because no example, however often repeated *within the bound the accountant
assumes*, can move the model much (a canary repeated k times is protected as a group, with epsilon roughly k
times larger: DP is per example, so deduplicate first); masking removes this canary completely because the card
recogniser finds it, but does nothing for a secret it does not recognise. DP costs perplexity; DP-LoRA costs
less, because far fewer parameters share the same noise budget.

## 5. Opacus side by side

The ecosystem path: `PrivacyEngine.make_private` wraps model, optimizer and data loader (Poisson sampling) in one
call; its accountant agrees with ours on the same run.
""")

code(r"""
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

data = encode(lines[:64], SEQ)
loader = DataLoader(TensorDataset(data["input_ids"]), batch_size=8)
model = load_tiny("target")[0].train()
engine = PrivacyEngine(accountant="rdp")
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.1,
                                         max_grad_norm=1.0, poisson_sampling=True)
steps = 0
for (x,) in loader:
    if x.numel() == 0:
        continue
    opt.zero_grad()
    logits = model(x)  # GradSampleModule: hooks collect per-example gradients during backward
    sum(sequence_loss(logits[i:i + 1], {"labels": causal_lm_labels(x[i:i + 1])})[0] for i in range(len(x))).backward()
    opt.step()
    steps += 1
    if steps == 3:
        break
print(f"Opacus: epsilon after {steps} steps = {engine.get_epsilon(1e-5):.4f}; "
      f"mlcore: {epsilon(1.1, 8 / 64, steps, 1e-5):.4f}")
""")

md(r"""
## 6. DP training, masking, or both?

| situation | masking (`mask_pii` first) | DP training (`TrainConfig(dp=True)`) |
|---|---|---|
| the sensitive values are structured identifiers (cards, IBANs, SSNs, phone numbers) | ✅ removes them exactly; cheap; no utility loss elsewhere | protects them too, at a cost in quality |
| free text may hold secrets no detector knows (a customer's illness, a nickname, an address in prose) | ❌ misses what it cannot recognise | ✅ bounds what any single example can contribute, recognised or not |
| a regulator or customer asks for a provable guarantee | ❌ only as good as the recogniser's recall | ✅ (epsilon, delta) per example, computed by the accountant |
| small data, or a task that needs rare examples | ✅ | ⚠️ noise swamps rare signals; epsilon must be large or data must grow |
| compute budget | negligible | per-example gradients: ~1.5-3x a normal step here; LoRA makes it cheap |

A bank would usually do **both**: mask identifiers before anything else (defence in depth, and masking also
keeps them out of logs and evaluation sets), then fine-tune with **DP-LoRA** at a moderate epsilon (1-8) when the
model sees free-text customer conversations, deduplicating records per customer first, since DP protects one
*example* and a customer who appears in 50 rows needs the group bound. Masking alone suits structured fields;
DP alone suits data where PII cannot be enumerated; neither replaces access control over the training data.
""")

builder.write()
