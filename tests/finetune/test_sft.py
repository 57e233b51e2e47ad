"""SFT data: labels mask exactly the prompt; the loss equals a hand-computed masked cross-entropy and
transformers' ``ForCausalLMLoss``; prompt-position logits do not move it; records load through ``datasets``;
packing keeps every (token, label) pair; bad records fail with their number."""

import json

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from mlcore.finetune.sft import (
    ALPACA,
    ChatTemplate,
    collate_sft,
    load_sft_records,
    sft_dataset,
    tokenize_sft,
    write_jsonl,
)
from mlcore.training import TrainConfig, causal_lm_loss, causal_lm_loss_sum, train
from mlcore.training.assets import load_tiny_tokenizer

RECORDS = [
    {"instruction": "Rewrite the sentence with its personal data masked.",
     "input": "Mail jane.doe@example.org about card 4111 1111 1111 1111.",
     "response": "Mail [EMAIL] about card [CARD]."},
    {"instruction": "Say hello.", "input": None, "response": "Hello!"},
    {"instruction": "Name a colour.", "input": "", "response": "Blue, like the sea."},
]


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def _hand_loss(logits, ids, prompt_lens, lengths):
    """-mean log p(x_{t+1} | x_<=t) over targets t+1 in [prompt_len, length), written out position by position."""
    total, count = 0.0, 0
    logp = torch.log_softmax(logits.double(), dim=-1)
    for b in range(ids.size(0)):
        for t in range(prompt_lens[b] - 1, lengths[b] - 1):
            total -= float(logp[b, t, ids[b, t + 1]])
            count += 1
    return total / count


def test_labels_mask_exactly_the_prompt(tok):
    data = sft_dataset(RECORDS, tok, max_length=96)
    eos = tok.special_tokens["<|endoftext|>"]
    for row, rec in enumerate(RECORDS):
        prompt = tok.encode(ALPACA.prompt(rec["instruction"], rec["input"]))
        answer = tok.encode(rec["response"]) + [eos]
        n = len(prompt) + len(answer)
        assert data["input_ids"][row, :n].tolist() == prompt + answer
        assert data["labels"][row, :len(prompt)].eq(-100).all()
        assert data["labels"][row, len(prompt):n].tolist() == answer
        assert data["labels"][row, n:].eq(-100).all() and data["attention_mask"][row, n:].eq(0).all()
        assert data["attention_mask"][row, :n].eq(1).all()
    assert "### Input:" not in ALPACA.prompt("x", "")  # an empty input adds no section


def test_loss_ignores_exactly_the_prompt_tokens(tok):
    data = sft_dataset(RECORDS, tok, max_length=96)
    ids, labels = data["input_ids"], data["labels"]
    prompt_lens = [int((row == -100).long().argmin()) for row in labels]
    lengths = data["attention_mask"].sum(1).tolist()
    logits = torch.randn(*ids.shape, 4096, generator=torch.Generator().manual_seed(0))
    ours = causal_lm_loss_sum(logits, labels)
    loss = ours[0] / ours[1]
    assert ours[1] == sum(n - p for n, p in zip(lengths, prompt_lens))  # every response token, eos included
    assert float(loss) == pytest.approx(_hand_loss(logits, ids, prompt_lens, lengths), rel=1e-6)
    torch.testing.assert_close(loss, ForCausalLMLoss(logits, labels, vocab_size=4096), rtol=1e-6, atol=1e-6)

    # logits at positions whose target is a prompt token (or padding) may be anything: same loss, zero gradient
    ignored = labels[:, 1:] == -100  # (B, T-1): position t predicts labels[:, t+1]
    changed = logits.clone()
    changed[:, :-1][ignored] += 50 * torch.randn(int(ignored.sum()), 4096, generator=torch.Generator().manual_seed(1))
    assert float(causal_lm_loss_sum(changed, labels)[0]) == pytest.approx(float(ours[0]), rel=1e-6)
    leaf = logits.clone().requires_grad_()
    causal_lm_loss_sum(leaf, labels)[0].backward()
    assert leaf.grad[:, :-1][ignored].abs().max() == 0
    assert (leaf.grad[:, :-1][~ignored].abs().sum(-1) > 0).all()
    # ... while one response position's logits do move it
    b, t = 0, prompt_lens[0]
    changed = logits.clone()
    changed[b, t] += 5 * torch.randn(4096, generator=torch.Generator().manual_seed(2))
    assert float(causal_lm_loss_sum(changed, labels)[0]) != pytest.approx(float(ours[0]), rel=1e-4)


def test_training_loop_logs_the_masked_loss(tok):
    from mlcore.model import Transformer, TransformerConfig
    from tests.finetune._lora_testutils import randomize_

    torch.manual_seed(0)
    model = randomize_(Transformer(TransformerConfig(vocab_size=4096, d_model=32, n_layers=1, n_heads=2,
                                                     max_seq_len=96)), seed=0, std=0.05)
    data = sft_dataset(RECORDS, tok, max_length=96)
    with torch.no_grad():
        before = causal_lm_loss(model(data["input_ids"], attention_mask=data["attention_mask"]), data["input_ids"],
                                attention_mask=data["attention_mask"],
                                loss_mask=(data["labels"] != -100).long())
    cfg = TrainConfig(max_steps=1, batch_size=3, lr=1e-3, progress=False, cpu=True, mixed_precision="no")
    result = train(model, data, cfg)
    assert result.history[0]["loss"] == pytest.approx(float(before), rel=1e-5)


def test_packing_keeps_every_token_and_label(tok):
    examples = tokenize_sft(RECORDS * 3, tok, max_length=96)
    packed = collate_sft(examples, max_length=32, pad_token_id=0, pack=True)
    assert packed["input_ids"].shape[1] == 32
    real = packed["attention_mask"].bool()
    assert packed["input_ids"][real].tolist() == [t for e in examples for t in e.input_ids]
    assert packed["labels"][real].tolist() == [t for e in examples for t in e.labels]
    assert (~real).sum() < 32 and real[:-1].all()  # only the last row is padded


def test_records_load_through_datasets(tmp_path, tok):
    path = write_jsonl(RECORDS, tmp_path / "sft.jsonl")
    ds = load_sft_records(path)
    assert len(ds) == 3 and ds[0]["response"] == RECORDS[0]["response"]
    from_file = sft_dataset(path, tok, max_length=96, pack=True)
    from_list = sft_dataset(RECORDS, tok, max_length=96, pack=True)
    for key in from_list:
        assert torch.equal(from_file[key], from_list[key])


def test_custom_template_and_special_text(tok):
    template = ChatTemplate(instruction_header="User: ", input_header=" | ", response_header="\nBot: ",
                            system="Be brief.")
    rec = {"instruction": "echo <|endoftext|>", "response": "ok"}
    (ex,) = tokenize_sft([rec], tok, max_length=64, template=template)
    eos = tok.special_tokens["<|endoftext|>"]
    assert ex.input_ids.count(eos) == 1 and ex.input_ids[-1] == eos  # text in the data is never a control token
    assert tok.decode(ex.input_ids[:ex.prompt_len]) == "Be brief.\n\nUser: echo <|endoftext|>\nBot: "


def test_hf_chat_template_masks_its_own_prompt():
    from transformers import AutoTokenizer

    from mlcore.finetune.encoder_classifier import minilm_dir

    hf_tok = AutoTokenizer.from_pretrained(minilm_dir())
    hf_tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [SEP] {% endfor %}"
                            "{% if add_generation_prompt %}[assistant] {% endif %}")
    data = sft_dataset(RECORDS[:2], hf_tok, max_length=64, template="hf")
    for row, rec in enumerate(RECORDS[:2]):
        user = rec["instruction"] + ("\n\n" + rec["input"] if rec["input"] else "")
        prompt = hf_tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                            add_generation_prompt=True)
        n_prompt = len(hf_tok.encode(prompt, add_special_tokens=False))
        assert data["labels"][row, :n_prompt].eq(-100).all()
        answer = data["labels"][row, n_prompt:][data["attention_mask"][row, n_prompt:].bool()]
        assert answer.tolist() == hf_tok.encode(rec["response"] + " [SEP]", add_special_tokens=False)
    with pytest.raises(ValueError, match="chat_template"):
        sft_dataset(RECORDS[:1], AutoTokenizer.from_pretrained(minilm_dir()), max_length=64, template="hf")


def test_bad_records_name_their_number(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps({"instruction": "no answer"}) + "\n")
    with pytest.raises(ValueError, match=r"record 2 \(line 3\).*missing the field 'response'"):
        load_sft_records(path)
    with pytest.raises(ValueError, match=r"record 2 is missing the field 'instruction'"):
        tokenize_sft([RECORDS[0], {"prompt": "x", "response": "y"}], tok, max_length=128)
    with pytest.raises(ValueError, match=r"record 1 has 'response' = 3"):
        tokenize_sft([{"instruction": "x", "response": 3}], tok, max_length=64)
    with pytest.raises(ValueError, match=r"record 1 has 'input' = \[1\]"):
        tokenize_sft([{"instruction": "x", "response": "y", "input": [1]}], tok, max_length=64)
    with pytest.raises(ValueError, match="leaves no response token"):
        tokenize_sft(RECORDS[:1], tok, max_length=8)
    with pytest.raises(ValueError, match="max_length must be an int >= 2"):
        tokenize_sft(RECORDS, tok, max_length=1)
    with pytest.raises(ValueError, match="records is empty"):
        tokenize_sft([], tok, max_length=64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sft_records(tmp_path / "missing.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON lines"):
        load_sft_records(tmp_path / "broken.jsonl")
    with pytest.raises(ValueError, match="tokenizer must be"):
        tokenize_sft(RECORDS, object(), max_length=64)
    with pytest.raises(ValueError, match="template must be"):
        tokenize_sft(RECORDS, tok, max_length=64, template="chatml")


@pytest.mark.parametrize("kw, match", [
    (dict(max_length=-1), "max_length"),      # was: the last token of every example silently sliced off
    (dict(max_length=0), "max_length"),       # was: rows of width 0
    (dict(max_length=0, pack=True), "max_length"),
    (dict(max_length=2.5, pack=True), "max_length"),
    (dict(pad_token_id=2.5), "pad_token_id"),  # was: truncated to 2 in the long tensor
    (dict(pad_token_id=-1), "pad_token_id"),
    (dict(pad_token_id=None), "pad_token_id"),
    (dict(pack="no"), "pack"),                # was: a truthy string, so packed
])
def test_collate_refuses_bad_lengths_pads_and_pack_flags(tok, kw, match):
    from mlcore.finetune.sft import SftExample

    examples = [SftExample([1, 2, 3, 4], 2), SftExample([5, 6, 7], 1)]
    args = {"max_length": 3, "pad_token_id": 0, **kw}
    with pytest.raises(ValueError, match=match):
        collate_sft(examples, **args)
    with pytest.raises(ValueError, match="eos_token_id"):
        tokenize_sft([{"instruction": "a", "response": "b"}], tok, max_length=8, eos_token_id="2")
