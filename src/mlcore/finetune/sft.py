"""Supervised fine-tuning (SFT) data: instruction / response records, a chat template, and labels that train
on the response only (InstructGPT, Ouyang et al. 2022; the Alpaca recipe, Taori et al. 2023).

A record ``{"instruction": ..., "input": ... (optional), "response": ...}`` becomes one token sequence

    x = tokens(prompt) ++ tokens(response) ++ [eos]          prompt = template(instruction, input)

and labels that copy ``x`` except on the prompt, where they are ``-100`` (the ``ignore_index`` of
``F.cross_entropy`` and of transformers' causal-LM loss). The training loop's next-token loss then counts only
the targets ``x_{t+1}`` that belong to the response (R: response positions, eos included):

    L = - 1/|R| · sum_{t+1 in R} log softmax(logits_t)[x_{t+1}]

so the model learns to answer, not to reproduce prompts. Prompt and response are tokenized separately and
concatenated, which puts the boundary exactly where the text puts it.

Templates. :class:`ChatTemplate` is plain text and works with any tokenizer (mlcore's ``BPETokenizer`` from
``load_tiny``, or a Hugging Face tokenizer); its default is Alpaca's layout::

    ### Instruction:
    {instruction}

    ### Input:                <- only when the record has a non-empty input
    {input}

    ### Response:
    {response}<eos>

``template="hf"`` uses the Hugging Face tokenizer's own ``chat_template`` (``apply_chat_template``): the prompt
is the rendering of the user turn with ``add_generation_prompt=True``, the response is whatever the rendering of
the full conversation adds after it (end-of-turn tokens included).

Packing (``pack=True``): the examples are concatenated and cut into blocks of ``max_length`` (the last block
padded), so no compute goes to padding; an example may then attend to the one before it in the same block, as
in GPT-style packing (TRL's ``packing=True`` did the same).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlcore.training.loss import IGNORE_INDEX

Record = Mapping[str, Any]


@dataclass(frozen=True)
class ChatTemplate:
    """A plain-text prompt layout (the default is Alpaca's). ``system`` (optional) is put in front of it."""

    instruction_header: str = "### Instruction:\n"
    input_header: str = "\n\n### Input:\n"
    response_header: str = "\n\n### Response:\n"
    system: str | None = None

    def prompt(self, instruction: str, input: str | None = None) -> str:
        """The text the model is given; the response follows it directly."""
        text = (self.system + "\n\n" if self.system else "") + self.instruction_header + instruction
        if input:
            text += self.input_header + input
        return text + self.response_header


ALPACA = ChatTemplate()


@dataclass(frozen=True)
class SftExample:
    """One tokenized record: ``input_ids`` (prompt, response, eos) and how many leading tokens are prompt."""

    input_ids: list[int]
    prompt_len: int

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * self.prompt_len + self.input_ids[self.prompt_len:]


# -- tokenizers --------------------------------------------------------------------------------------------


def text_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """``str -> list[int]`` without special tokens added: mlcore's ``BPETokenizer`` (special-token text in the
    data is encoded as ordinary text, never as a control token) or a Hugging Face tokenizer."""
    from mlcore.tokenizer import BPETokenizer

    if isinstance(tokenizer, BPETokenizer):
        return lambda text: tokenizer.encode(text, disallowed_special=())
    if callable(getattr(tokenizer, "encode", None)) and hasattr(tokenizer, "eos_token_id"):
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False))
    raise ValueError(f"tokenizer must be an mlcore BPETokenizer or a Hugging Face tokenizer, got "
                     f"{type(tokenizer).__name__}")


def eos_id_of(tokenizer: Any) -> int:
    """The id that ends a response: ``<|endoftext|>`` of a ``BPETokenizer``; ``eos_token_id`` (else
    ``sep_token_id``) of a Hugging Face tokenizer."""
    from mlcore.tokenizer import BPETokenizer

    if isinstance(tokenizer, BPETokenizer):
        special = tokenizer.special_tokens
        if "<|endoftext|>" in special:
            return int(special["<|endoftext|>"])
        raise ValueError(f"BPETokenizer has no '<|endoftext|>' special token (has {sorted(special)}); "
                         "pass eos_token_id=")
    for attr in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(tokenizer).__name__} has neither eos_token_id nor sep_token_id; pass eos_token_id=")


# -- records -----------------------------------------------------------------------------------------------


def load_sft_records(path: str | Path, *, instruction_field: str = "instruction", response_field: str = "response",
                     input_field: str | None = "input"):
    """Read instruction / response records from a local JSON lines file through ``datasets`` (offline).

    Returns a ``datasets.Dataset``. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for
    malformed JSON or a record (numbered from 1, with its line) whose instruction or response is missing,
    null or not a string.
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data file {str(path)!r} does not exist (expected a local .jsonl file)")
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # datasets raises several kinds for malformed JSON
        raise ValueError(f"SFT data file {str(path)!r} is not valid JSON lines: {err}") from err
    if len(ds) == 0:
        raise ValueError(f"SFT data file {str(path)!r} holds no records")
    lines = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    for i, record in enumerate(ds):
        where = f"record {i + 1} (line {lines[i]})" if i < len(lines) and len(lines) == len(ds) else f"record {i + 1}"
        check_record(record, where=f"{where} of {str(path)!r}", instruction_field=instruction_field,
                     response_field=response_field, input_field=input_field)
    return ds


def check_record(record: Any, *, where: str, instruction_field: str = "instruction",
                 response_field: str = "response", input_field: str | None = "input") -> None:
    """Raise ``ValueError`` naming ``where`` unless ``record`` holds a non-empty string instruction and response
    (and, when present and not null, a string input)."""
    if not isinstance(record, Mapping):
        raise ValueError(f"SFT {where} must be a JSON object, got {type(record).__name__}")
    for name in (instruction_field, response_field):
        value = record.get(name)
        if name not in record or value is None:
            raise ValueError(f"SFT {where} is missing the field {name!r} (fields present: "
                             f"{sorted(k for k, v in record.items() if v is not None)})")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"SFT {where} has {name!r} = {value!r}; expected a non-empty string")
    if input_field is not None and record.get(input_field) is not None and not isinstance(record[input_field], str):
        raise ValueError(f"SFT {where} has {input_field!r} = {record[input_field]!r}; expected a string or null")


def render(record: Record, tokenizer: Any, template: ChatTemplate | str = ALPACA, *,
           instruction_field: str = "instruction", response_field: str = "response",
           input_field: str | None = "input") -> tuple[str, str]:
    """``(prompt_text, response_text)`` of one record under ``template`` (a :class:`ChatTemplate` or ``"hf"``)."""
    instruction, response = record[instruction_field], record[response_field]
    extra = record.get(input_field) if input_field else None
    if isinstance(template, ChatTemplate):
        return template.prompt(instruction, extra), response
    if template != "hf":
        raise ValueError(f"template must be a ChatTemplate or 'hf', got {template!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template='hf' needs a tokenizer with a chat_template; {type(tokenizer).__name__} has none "
                         "(use a ChatTemplate instead)")
    user = {"role": "user", "content": instruction + ("\n\n" + extra if extra else "")}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("template='hf': the tokenizer's chat_template does not render the conversation as the "
                         "prompt followed by the answer, so the prompt cannot be masked")
    return prompt, full[len(prompt):]


def tokenize_sft(records: Sequence[Record] | Any, tokenizer: Any, *, max_length: int,
                 template: ChatTemplate | str = ALPACA, eos_token_id: int | None = None,
                 instruction_field: str = "instruction", response_field: str = "response",
                 input_field: str | None = "input") -> list[SftExample]:
    """Tokenize records (a list of dicts or a ``datasets.Dataset``) into :class:`SftExample`.

    With a :class:`ChatTemplate` the eos id is appended to each response (so the model learns to stop).
    Sequences longer than ``max_length`` are cut on the right; a record whose prompt alone leaves no response
    token within ``max_length`` raises ``ValueError`` naming it.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, numbers.Integral)
                                     or eos_token_id < 0):
        raise ValueError(f"eos_token_id must be a non-negative int or None, got {eos_token_id!r}")
    encode = text_encoder(tokenizer)
    eos = None if template == "hf" else (eos_token_id if eos_token_id is not None else eos_id_of(tokenizer))
    fields = dict(instruction_field=instruction_field, response_field=response_field, input_field=input_field)
    examples = []
    for i, record in enumerate(records):
        check_record(record, where=f"record {i + 1}", **fields)
        prompt, response = render(record, tokenizer, template, **fields)
        prompt_ids, response_ids = encode(prompt), encode(response) + ([eos] if eos is not None else [])
        if len(prompt_ids) >= max_length:
            raise ValueError(f"SFT record {i + 1}: its prompt is {len(prompt_ids)} tokens, which leaves no response "
                             f"token within max_length={max_length}")
        examples.append(SftExample((prompt_ids + response_ids)[:max_length], len(prompt_ids)))
    if not examples:
        raise ValueError("records is empty: no SFT example to tokenize")
    return examples


def collate_sft(examples: Sequence[SftExample], *, max_length: int, pad_token_id: int,
                pack: bool = False) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask", "labels"}``, each ``(N, L)``, ready for :func:`mlcore.training.train`.

    Unpacked: one example per row, right-padded to the longest (``L <= max_length``). Packed: examples laid
    end to end and cut into rows of ``L = max_length``, the last row padded. Pads have attention 0 and label -100.
    """
    if not examples:
        raise ValueError("examples is empty: nothing to collate")
    # checked here because a bad value fails silently below: max_length=-1 slices the last token off every
    # example, 0 gives empty rows, a float pad id is truncated into the long tensor, pack="no" is truthy
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, numbers.Integral) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be a non-negative int (a token id), got {pad_token_id!r}")
    if not isinstance(pack, bool):
        raise ValueError(f"pack must be a bool, got {pack!r}")
    max_length, pad_token_id = int(max_length), int(pad_token_id)
    if pack:
        ids = [t for e in examples for t in e.input_ids]
        labels = [t for e in examples for t in e.labels]
        rows = [(ids[s:s + max_length], labels[s:s + max_length]) for s in range(0, len(ids), max_length)]
    else:
        rows = [(e.input_ids[:max_length], e.labels[:max_length]) for e in examples]
    width = max(len(r[0]) for r in rows) if not pack else max_length
    out = {"input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
           "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
           "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)}
    for r, (row_ids, row_labels) in enumerate(rows):
        n = len(row_ids)
        out["input_ids"][r, :n] = torch.tensor(row_ids)
        out["attention_mask"][r, :n] = 1
        out["labels"][r, :n] = torch.tensor(row_labels)
    return out


def sft_dataset(source: str | Path | Sequence[Record] | Any, tokenizer: Any, *, max_length: int, pack: bool = False,
                template: ChatTemplate | str = ALPACA, eos_token_id: int | None = None,
                pad_token_id: int | None = None, **fields: Any) -> dict[str, torch.Tensor]:
    """Records (a JSON lines path, a list of dicts or a ``datasets.Dataset``) -> tensors for ``train``.

    ``fields`` are ``instruction_field`` / ``response_field`` / ``input_field``. The pad id defaults to the
    eos id (pads never count: attention 0, label -100).
    """
    records = load_sft_records(source, **fields) if isinstance(source, (str, Path)) else source
    examples = tokenize_sft(records, tokenizer, max_length=max_length, template=template,
                            eos_token_id=eos_token_id, **fields)
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else eos_id_of(tokenizer)
    return collate_sft(examples, max_length=max_length, pad_token_id=pad_token_id, pack=pack)


def write_jsonl(records: Sequence[Record], path: str | Path) -> Path:
    """Write records as JSON lines (one object per line, UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
