"""Data for causal language modelling: local text / JSON lines through Hugging Face ``datasets``,
tokenized and packed into fixed-length blocks, served in an order that depends only on ``(seed, step)``.

Packing (as in GPT-2 and nanoGPT): the documents' tokens are concatenated, each followed by a separator
(end-of-text) token, and cut into blocks of ``block_size`` tokens; the ragged tail is dropped. No block holds
padding, so every position trains.

Order: micro-batch number ``i`` holds positions ``i*B .. i*B + B - 1`` of an endless stream in which epoch
``e`` is ``randperm(N)`` drawn from a generator seeded with ``seed + e``. Because a batch is a pure function
of ``(seed, i)``, resuming at step ``s`` serves exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import codecs
import json
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSON_SUFFIXES = (".json", ".jsonl")

Batch = dict[str, torch.Tensor]


SAMPLE_BY = ("document", "paragraph", "line")  # the rows datasets' "text" builder can make


def load_text_dataset(path: str | Path, *, text_field: str = "text", sample_by: str = "document"):
    """Load a local ``.txt`` / ``.md`` file or ``.json`` / ``.jsonl`` (JSON lines) file as a ``datasets.Dataset``
    with one string column ``text_field``. Nothing is downloaded.

    ``sample_by`` ("document", "paragraph" or "line") tells the text builder what one row is.
    The file must be UTF-8 (a BOM is allowed; ``datasets`` keeps it in a text file's first row, as here).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unknown suffix, a file that is not
    UTF-8 (naming the first bad byte's offset and line), a JSON file
    without ``text_field``, a JSON row whose ``text_field`` is missing, null or not a string (naming its line, or
    its record number in a JSON array), or a dataset with no text in it.
    """
    import datasets

    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field must be a non-empty column name, got {text_field!r}")
    if sample_by not in SAMPLE_BY:
        raise ValueError(f"sample_by must be one of {SAMPLE_BY}, got {sample_by!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist (expected a local .txt, .md or .jsonl file)")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES + JSON_SUFFIXES:
        _check_utf8(path)
    if suffix in TEXT_SUFFIXES:
        ds = datasets.load_dataset("text", data_files=str(path), split="train", sample_by=sample_by)
        if text_field != "text":
            ds = ds.rename_column("text", text_field)
    elif suffix in JSON_SUFFIXES:
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as err:  # datasets raises several kinds for malformed JSON
            raise ValueError(f"data file {str(path)!r} is not valid JSON lines: {err}") from err
        if text_field not in ds.column_names:
            raise ValueError(f"data file {str(path)!r} has columns {ds.column_names}, expected a {text_field!r} column")
        _check_json_texts(path, ds[text_field], text_field)
    else:
        raise ValueError(f"data file {str(path)!r} has suffix {suffix!r}; expected one of "
                         f"{TEXT_SUFFIXES + JSON_SUFFIXES}")
    if len(ds) == 0 or not any(isinstance(t, str) and t.strip() for t in ds[text_field]):
        raise ValueError(f"data file {str(path)!r} holds an empty dataset (no non-blank {text_field!r} rows)")
    return ds


def _check_utf8(path: Path, chunk_bytes: int = 1 << 20) -> None:
    """Refuse a file that is not UTF-8, naming the first bad byte and its line. ``datasets`` reads text and
    JSON as UTF-8 but failed with a bare ``DatasetGenerationError`` (text) or a ``UnicodeDecodeError`` naming
    no file when the column was read (JSON: pyarrow keeps the invalid bytes). A UTF-8 BOM is valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with path.open("rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                data = err.object  # the bytes held back from the previous chunk (an unfinished character) + chunk
                start = offset - (len(data) - len(chunk)) + err.start
                lines += data[:err.start].count(b"\n")
                raise ValueError(f"data file {str(path)!r} is not UTF-8 text: byte {data[err.start]:#04x} at "
                                 f"offset {start} (line {lines}) cannot be decoded ({err.reason}); convert it "
                                 "first, e.g. `iconv -f latin1 -t utf-8` for a latin-1 file") from None
            if not chunk:
                return
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _json_record(path: Path, index: int) -> tuple[str, object]:
    """Where row ``index`` of a JSON file is ("line N" of JSON lines, "record N" of an array) and what it holds.

    ``datasets`` skips blank lines, so row ``index`` is the ``index``-th non-blank line.
    """
    with path.open(encoding="utf-8-sig") as f:  # datasets reads a JSON file with a BOM; so must this
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):
            return f"record {index} (0-based) of the JSON array", json.load(f)[index]
        seen = -1
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                seen += 1
                if seen == index:
                    return f"line {line_no}", json.loads(line)
    return f"row {index}", None  # not reached for a file datasets could read


def _check_json_texts(path: Path, texts: Iterable[object], text_field: str) -> None:
    """Refuse the first row whose ``text_field`` is not a string (``datasets`` fills a missing key with None)."""
    for index, text in enumerate(texts):
        if isinstance(text, str):
            continue
        where, record = _json_record(path, index)
        if isinstance(record, dict) and text_field not in record:
            problem = f"has no {text_field!r} key (keys: {sorted(record)})"
        else:
            problem = f"has {text_field!r} = {text!r} ({type(text).__name__}), expected a string"
        raise ValueError(f"data file {str(path)!r}: {where} {problem}")


def pack_tokens(documents: Iterable[list[int]], block_size: int, *, separator_id: int | None = None) -> torch.Tensor:
    """Concatenate token lists (each followed by ``separator_id`` when given) and cut them into a
    ``LongTensor (N, block_size)``, dropping the ragged tail."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2 (one input and one target), got {block_size!r}")
    if separator_id is not None and (isinstance(separator_id, bool) or not isinstance(separator_id, int)
                                     or separator_id < 0):
        raise ValueError(f"separator_id must be None or a token id >= 0, got {separator_id!r}")
    stream: list[int] = []
    for ids in documents:
        stream.extend(ids)
        if separator_id is not None:
            stream.append(separator_id)
    n_blocks = len(stream) // block_size
    bad = next((t for t in stream if isinstance(t, bool) or not isinstance(t, int) or t < 0), None)
    if bad is not None:  # torch.tensor would truncate 1.5 to 1 silently
        raise ValueError(f"documents must hold token ids (ints >= 0), got {bad!r}")
    if n_blocks == 0:
        raise ValueError(f"only {len(stream)} tokens to pack, fewer than block_size={block_size}: the dataset is "
                         "empty or too small")
    return torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def tokenize_and_pack(
    dataset,
    encode: Callable[[str], list[int]],
    block_size: int,
    *,
    text_field: str = "text",
    separator_id: int | None = None,
) -> Batch:
    """Tokenize a ``datasets.Dataset`` with ``encode`` (``Dataset.map``, batched) and pack it with
    :func:`pack_tokens`. Returns ``{"input_ids": LongTensor (N, block_size)}``, ready for :func:`train`."""
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to tokenize")
    if text_field not in dataset.column_names:
        raise ValueError(f"text_field={text_field!r} is no column of the dataset; columns: {dataset.column_names}")
    tokenized = dataset.map(
        lambda rows: {"input_ids": [encode(t) for t in rows[text_field]]},
        batched=True,
        remove_columns=dataset.column_names,
        desc="tokenizing",
    )
    return {"input_ids": pack_tokens(tokenized["input_ids"], block_size, separator_id=separator_id)}


def check_data(data: Mapping[str, torch.Tensor], name: str = "train_data") -> int:
    """Validate a batch dict (``input_ids`` ``(N, T)`` long; optional ``attention_mask`` / ``loss_mask`` of the
    same shape) and return ``N``."""
    if not isinstance(data, Mapping) or "input_ids" not in data:
        raise ValueError(f"{name} must be a dict with an 'input_ids' tensor, got {type(data).__name__}")
    ids = data["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        raise ValueError(f"{name}['input_ids'] must be a LongTensor (N, T), got "
                         f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
    if ids.size(0) == 0 or ids.size(1) < 2:
        raise ValueError(f"{name} is empty: input_ids has shape {tuple(ids.shape)}, expected N >= 1 and T >= 2")
    for key, value in data.items():
        if key != "input_ids" and (not isinstance(value, torch.Tensor) or value.shape != ids.shape):
            raise ValueError(f"{name}[{key!r}] must have the shape of input_ids {tuple(ids.shape)}, "
                             f"got {tuple(getattr(value, 'shape', ()))}")
    labels = data.get("labels")
    if labels is not None and "loss_mask" in data:  # labels are used as given: the mask would be ignored silently
        raise ValueError(f"{name} holds both 'labels' and 'loss_mask'; give one (labels are used as given, so "
                         "the loss_mask would be ignored): put -100 in labels where loss_mask is 0")
    if labels is not None and (labels.dtype != torch.long or bool(((labels < 0) & (labels != -100)).any())):
        raise ValueError(f"{name}['labels'] must be a LongTensor of token ids >= 0 or -100 (ignored), got "
                         f"dtype {labels.dtype}")
    return ids.size(0)


def batch_indices(num_examples: int, batch_size: int, index: int, *, seed: int) -> torch.Tensor:
    """Example indices ``(batch_size,)`` of micro-batch ``index`` in the seeded endless stream (module doc)."""
    # a negative batch_size failed deep in torch.arange, a negative index silently served "epoch -1"
    for name, value, low in (("num_examples", num_examples, 1), ("batch_size", batch_size, 1), ("index", index, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"batch_indices: {name} must be an int >= {low}, got {value!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"batch_indices: seed must be an int, got {seed!r}")
    num_examples, batch_size, index, seed = int(num_examples), int(batch_size), int(index), int(seed)  # numpy ints
    positions = torch.arange(index * batch_size, (index + 1) * batch_size)
    epochs = positions // num_examples
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed + epoch))
        chosen = epochs == epoch
        out[chosen] = perm[positions[chosen] % num_examples]
    return out


def get_batch(data: Mapping[str, torch.Tensor], indices: torch.Tensor) -> Batch:
    """Rows ``indices`` of every tensor in ``data``."""
    return {key: value[indices] for key, value in data.items()}


def iterate_in_order(data: Mapping[str, torch.Tensor], batch_size: int, max_batches: int | None = None
                     ) -> Iterator[Batch]:
    """Batches of ``data`` in stored order (for evaluation), at most ``max_batches`` of them."""
    n = check_data(data, "eval_data")
    for i, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        yield {key: value[start:start + batch_size] for key, value in data.items()}
