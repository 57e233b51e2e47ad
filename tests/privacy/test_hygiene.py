"""API hygiene (issue 14): optional imports, strings where lists belong, short error excerpts, no global RNG."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlcore.privacy import detect_pii, mask_pii
from mlcore.privacy.audit.memorization import SecretSpace, canary_exposure
from mlcore.privacy.detect import check_str_list
from mlcore.privacy.evaluation.evaluate import evaluate
from mlcore.privacy.recognizers.cards import find_cards

PRIVACY = Path(__file__).resolve().parents[2] / "src" / "mlcore" / "privacy"

BLOCK_FAKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "faker" or name.startswith("faker."):
            raise ModuleNotFoundError("No module named 'faker' (blocked)")
sys.meta_path.insert(0, Block())
import mlcore.privacy as p
print(p.mask_pii("card 4111 1111 1111 1111"))
try:
    from mlcore.privacy.evaluation.synthetic import SyntheticPii
    SyntheticPii(0)
except ModuleNotFoundError as exc:
    print("lazy:", exc)
"""


def test_import_without_faker():
    out = subprocess.run([sys.executable, "-c", BLOCK_FAKER], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "card [CARD]" in out.stdout and "lazy: No module named 'faker'" in out.stdout


@pytest.mark.parametrize("call", [
    lambda: detect_pii("x", kinds="CARD"),
    lambda: mask_pii("x", kinds="EMAIL"),
    lambda: detect_pii("x", recognizers=find_cards),
    lambda: evaluate("a text, not records", detect_pii),
    lambda: canary_exposure(lambda t: None, "123", SecretSpace("pin {}", "0123456789", 3)),
    lambda: check_str_list("falcon", "blocklist"),
    lambda: check_str_list(["ok", 3], "allowed"),
])
def test_a_string_where_a_list_belongs_is_refused(call):
    with pytest.raises(TypeError, match="list|sequence|str"):
        call()


def test_check_str_list_accepts_lists_and_quotes_little():
    assert check_str_list(["jane@example.com"], "allowed") == ("jane@example.com",)
    assert check_str_list((), "allowed") == ()
    with pytest.raises(TypeError) as info:
        check_str_list("x" * 5000, "blocklist")
    assert "blocklist" in str(info.value) and len(str(info.value)) < 200


def test_tokenizer_load_error_quotes_an_excerpt(tmp_path):
    from mlcore.tokenizer import BPETokenizer

    path = tmp_path / "bad.tok"
    path.write_text("X" * 170_000 + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        BPETokenizer.load(path)
    assert len(str(info.value)) < 300 + len(str(path)) and "170000 characters" in str(info.value)


def test_no_global_rng_seeding_in_privacy():
    for file in PRIVACY.rglob("*.py"):
        lines = file.read_text().splitlines()
        for i, line in enumerate(lines):
            assert not re.search(r"\brandom\.seed\(|np\.random\.seed\(|set_num_threads|matplotlib\.use\(", line), file
            if re.search(r"\btorch\.manual_seed\(", line):  # only inside fork_rng, which restores the state
                assert any("fork_rng" in prev for prev in lines[max(0, i - 3) : i]), f"{file}:{i + 1}"
