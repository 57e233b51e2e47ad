"""A memorization audit end to end: plant canaries k times in fine-tuning data, train, measure exposure.

Following Carlini et al. (2019), several canaries are planted in one training set, canary i repeated k_i
times, so one training run gives exposure as a function of repetitions. The same run is repeated on the
data after `mask_pii` has redacted it: the canary never reaches the model and its exposure falls to chance
(about 1 bit, the expected exposure of a random candidate).

The model is mlcore's decoder (`mlcore.model.Transformer`) over bytes (vocabulary 256 + a pad id), trained
with mlcore's loop (`mlcore.training.train`); the corpus is CPython's `pydoc_data.topics`. The canary is
a Luhn-valid Visa number "my card number is 4556 7375 8XXX XXXC" whose free digits X form the randomness
space R (C is the check digit), so the card recognizer can remove it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from mlcore.privacy.audit.memorization import SecretSpace, canary_exposure
from mlcore.privacy.recognizers.checksums import luhn_check_digit

PAD = 256
_CARD_PREFIX = "4556737586899"


def card_secret_format(free: str) -> str:
    """Free digits -> a grouped Luhn-valid 16-digit Visa ``4556 7375 86.. ...C``."""
    if not 1 <= len(free) <= 13:
        raise ValueError(f"a card has room for 1-13 free digits, got {len(free)}")
    body = _CARD_PREFIX[: 15 - len(free)] + free
    digits = body + luhn_check_digit(body)
    return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


def card_space(free_digits: int = 4) -> SecretSpace:
    return SecretSpace("my card number is {}", "0123456789", free_digits, card_secret_format)


def encode_bytes(texts: Sequence[str], seq_len: int) -> dict[str, torch.Tensor]:
    """UTF-8 bytes, right-padded with `PAD`: ``{"input_ids": (N, T), "attention_mask": (N, T)}``."""
    ids = torch.full((len(texts), seq_len), PAD, dtype=torch.long)
    mask = torch.zeros((len(texts), seq_len), dtype=torch.long)
    for i, t in enumerate(texts):
        b = list(t.encode()[:seq_len])
        ids[i, : len(b)] = torch.tensor(b, dtype=torch.long)
        mask[i, : len(b)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_log_perplexity(model: torch.nn.Module, seq_len: int) -> Callable[[list[str]], torch.Tensor]:
    """texts -> summed next-byte negative log-likelihood (nats) per text, (N,)."""

    @torch.no_grad()
    def log_perplexity(texts: list[str]) -> torch.Tensor:
        model.eval()
        batch = encode_bytes(texts, seq_len)
        device = next(model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = model(ids, attention_mask=mask).float()  # (N, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].clamp(max=logits.size(-1) - 1))
        nll = -(logp.squeeze(-1) * mask[:, 1:])  # (N, T-1)
        return nll.sum(-1).cpu()

    return log_perplexity


def corpus_lines(n_lines: int, seq_len: int, seed: int = 0) -> list[str]:
    """`n_lines` non-empty lines of CPython's pydoc topics, cut to `seq_len` bytes."""
    from pydoc_data.topics import topics

    lines = [ln.strip() for text in topics.values() for ln in text.splitlines() if len(ln.strip()) > 20]
    random.Random(seed).shuffle(lines)
    return [ln.encode()[:seq_len].decode(errors="ignore") for ln in lines[:n_lines]]


@dataclass
class AuditResult:
    repetitions: list[int]
    exposure_raw: list[float]
    exposure_masked: list[float]
    space_size: int
    method: str
    final_loss: dict[str, float] = field(default_factory=dict)
    canaries: list[str] = field(default_factory=list, repr=False)
    models: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)


def _train(texts: list[str], seq_len: int, steps: int, seed: int, device: str, d_model: int,
           lr: float = 3e-3) -> torch.nn.Module:
    from mlcore.model import Transformer, TransformerConfig
    from mlcore.training import TrainConfig, train

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG state
        torch.manual_seed(seed)
        model = Transformer(TransformerConfig(vocab_size=PAD + 1, d_model=d_model, n_layers=2, n_heads=4,
                                              max_seq_len=seq_len))
    config = TrainConfig(max_steps=steps, batch_size=16, lr=lr, warmup_steps=min(10, steps), weight_decay=0.0, log_every=0,
                         progress=False, seed=seed, cpu=device == "cpu")
    train(model, encode_bytes(texts, seq_len), config)
    return model


def run_audit(
    repetitions: Sequence[int] = (0, 1, 4, 16),
    *,
    free_digits: int = 3,
    n_lines: int = 300,
    steps: int = 150,
    seq_len: int = 48,
    d_model: int = 64,
    lr: float = 3e-3,
    method: str = "auto",
    n_samples: int = 2000,
    seed: int = 0,
    device: str = "cpu",
) -> AuditResult:
    """Train twice (raw data, then `mask_pii`-redacted data) and return exposure per repetition count."""
    from mlcore.privacy.transforms.masking import mask_pii

    if any(k < 0 for k in repetitions):
        raise ValueError(f"repetitions must be >= 0, got {list(repetitions)}")
    rng = random.Random(seed)
    space = card_space(free_digits)
    secrets: list[str] = []
    while len(secrets) < len(repetitions):
        s = space.sample(1, rng)[0]
        if s not in secrets:
            secrets.append(s)
    base = corpus_lines(n_lines, seq_len, seed)
    planted = base + [space.render(s) for s, k in zip(secrets, repetitions) for _ in range(k)]
    rng.shuffle(planted)
    result = AuditResult(list(repetitions), [], [], space.size, method, canaries=[space.render(s) for s in secrets])
    for name, texts in (("raw", planted), ("masked", [mask_pii(t) for t in planted])):
        model = _train(texts, seq_len, steps, seed, device, d_model, lr)
        exps = canary_exposure(make_log_perplexity(model, seq_len), secrets, space, method=method,
                               n_samples=n_samples, seed=seed)
        getattr(result, f"exposure_{name}").extend(e.exposure for e in exps)
        result.method = exps[0].method
        lp = make_log_perplexity(model, seq_len)(base[:256])
        n_bytes = encode_bytes(base[:256], seq_len)["attention_mask"][:, 1:].sum()
        result.final_loss[name] = float(lp.sum() / n_bytes)
        result.models[name] = model
    return result


@torch.no_grad()
def greedy_bytes(model: torch.nn.Module, prompt: str, max_new_tokens: int = 24) -> Iterator[str]:
    """Greedy byte-level continuation of `prompt`, yielded one decoded character at a time (a stream)."""
    model.eval()
    device = next(model.parameters()).device
    ids = list(prompt.encode())
    pending = b""
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids], device=device))[0, -1, :PAD]
        nxt = int(logits.argmax())
        ids.append(nxt)
        pending += bytes([nxt])
        try:
            yield pending.decode()
            pending = b""
        except UnicodeDecodeError:
            continue


def plot_audit(result: AuditResult, path: str | None = None):
    """Exposure vs repetitions, raw vs masked training data (matplotlib Figure; saved when `path` is given).

    The figure is built without pyplot, so the caller's backend is never switched (a notebook shows the
    returned figure, and every later ``plt.show()`` still works)."""
    import math

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(result.repetitions, result.exposure_raw, "o-", label="raw training data")
    ax.plot(result.repetitions, result.exposure_masked, "s--", label="mask_pii first (redact)")
    ax.axhline(math.log2(result.space_size), color="gray", lw=0.8, ls=":", label="log2 |R| (fully memorised)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("canary repetitions k")
    ax.set_ylabel("exposure (bits)")
    ax.set_title(f"Canary exposure ({result.method}, |R| = {result.space_size:,})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
