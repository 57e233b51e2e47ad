"""A JSON row whose text is missing, null or not a string is refused with its line (or record) number."""

from __future__ import annotations

import json

import datasets
import pytest

from mlcore.training.data import load_text_dataset


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_text_names_the_line_counting_blank_lines(tmp_path):
    # line 3 is blank (datasets skips it), so the bad row is the third record but on line 4
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps({"text": "a"}), json.dumps({"text": "b"}), "",
                                               json.dumps({"body": "c"}), json.dumps({"text": "d"})])
    assert datasets.load_dataset("json", data_files=str(path), split="train")["text"][2] is None  # the silent None
    with pytest.raises(ValueError, match=r"d\.jsonl'.*line 4 has no 'text' key \(keys: \['body'\]\)"):
        load_text_dataset(path)


def test_null_and_non_string_text_are_named(tmp_path):
    null = _write_lines(tmp_path / "n.jsonl", [json.dumps({"text": "a"}), json.dumps({"text": None})])
    with pytest.raises(ValueError, match=r"line 2 has 'text' = None \(NoneType\), expected a string"):
        load_text_dataset(null)
    number = _write_lines(tmp_path / "i.jsonl", [json.dumps({"text": "a"}), json.dumps({"text": 5})])
    with pytest.raises(ValueError, match=r"line 2 has 'text' = 5 \(int\)"):
        load_text_dataset(number)


def test_custom_field_and_json_array(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"body": "x"}, {"body": "y"}, {"other": 1}]))
    with pytest.raises(ValueError, match=r"record 2 \(0-based\) of the JSON array has no 'body' key"):
        load_text_dataset(path, text_field="body")


def test_good_rows_load_as_datasets_reads_them(tmp_path):
    rows = [{"text": "hello", "id": 1}, {"text": "", "id": 2}, {"text": "world", "id": 3}]
    path = _write_lines(tmp_path / "g.jsonl", [json.dumps(r) for r in rows])
    reference = datasets.load_dataset("json", data_files=str(path), split="train")
    assert load_text_dataset(path)["text"] == reference["text"] == ["hello", "", "world"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_file_that_is_not_utf8_is_named(tmp_path, suffix):
    """datasets raised a bare DatasetGenerationError (text) or a UnicodeDecodeError naming no file (JSON, when
    the column was read) for latin-1 bytes; now a ValueError with the file, byte offset and line."""
    row = json.dumps({"text": "ok"}) if suffix == ".jsonl" else "ok"
    path = tmp_path / f"d{suffix}"
    path.write_bytes(f"{row}\n{row}\n".encode() + b'{"text": "caf\xe9"}\n')  # line 3, latin-1 e-acute
    offset = 2 * len(row) + 2 + len('{"text": "caf')
    with pytest.raises(ValueError, match=rf"d\{suffix}' is not UTF-8 text: byte 0xe9 at offset {offset} \(line 3\)"):
        load_text_dataset(path)


def test_utf8_bom_is_read_as_datasets_reads_it(tmp_path):
    """A BOM is UTF-8: JSON rows come without it, a text file keeps it in its first row (datasets' own rows);
    a bad JSON row of a BOM-prefixed array is named by its record number."""
    bom = "\ufeff".encode()
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "a.txt").write_bytes(bom + b"x\ny\n")
    for name, builder, kwargs in (("a.jsonl", "json", {}), ("a.txt", "text", {"sample_by": "line"})):
        expected = datasets.load_dataset(builder, data_files=str(tmp_path / name), split="train", **kwargs)
        assert load_text_dataset(tmp_path / name, **kwargs)["text"] == expected["text"]
    (tmp_path / "b.json").write_bytes(bom + b'[{"text": "a"}, {"text": 3}]')
    with pytest.raises(ValueError, match=r"record 1 \(0-based\) of the JSON array has 'text' = 3"):
        load_text_dataset(tmp_path / "b.json")
