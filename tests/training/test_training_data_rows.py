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
