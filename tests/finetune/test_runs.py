"""The real fine-tuning runs, tiny: MiniLM's mean pooling equals sentence-transformers', mlcore LoRA on the
classifier equals PEFT's, a few steps of each method run and report sane figures; the decoder's SFT run
exports an adapter PEFT loads onto ``to_hf()`` with the same logits, merges and reloads."""

import copy
import warnings

import pytest
import torch

from mlcore.finetune import LoraConfig, apply_lora, lora_layers, trainable_parameters
from mlcore.finetune.encoder_classifier import load_minilm_classifier, mean_pool, minilm_dir
from mlcore.finetune.intent_data import make_intent_dataset
from mlcore.finetune.intent_run import IntentRunConfig, run_intent
from mlcore.finetune.sft_run import INSTRUCTION, pii_sft_records, run_pii_sft
from mlcore.privacy import mask_pii
from mlcore.training import load_tiny


@pytest.fixture(scope="module")
def classifier():
    return load_minilm_classifier(12, seed=0)


@pytest.mark.slow  # importing sentence-transformers alone takes several seconds
def test_mean_pooling_equals_sentence_transformers(classifier):
    from sentence_transformers import SentenceTransformer

    model, tok = classifier
    texts = ["My card was stolen yesterday.", "When is my payment due? I moved to Berlin last month."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = mean_pool(model.encoder(**enc).last_hidden_state, enc["attention_mask"])
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    ref = st.encode(texts, convert_to_tensor=True)  # its pipeline ends in a Normalize module
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), ref, rtol=1e-4, atol=1e-5)


def test_lora_classifier_equals_peft(classifier):
    import peft

    base, tok = classifier
    ours = copy.deepcopy(base)
    apply_lora(ours, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["head"]),
               generator=torch.Generator().manual_seed(0), verbose=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.lora_B.weight.normal_(0.0, 0.05, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"], modules_to_save=["head"]))
    theirs = {n.removeprefix("base_model.model."): m for n, m in twin.named_modules()
              if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert set(theirs) == set(lora_layers(ours)) and len(theirs) == 36  # 6 layers x 6 linear layers
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            theirs[name].lora_A["default"].weight.copy_(layer.lora_A.weight)
            theirs[name].lora_B["default"].weight.copy_(layer.lora_B.weight)
    assert trainable_parameters(ours)[0] == twin.get_nb_trainable_parameters()[0]
    enc = tok(["dispute a charge of $40.00 from Acme", "lost my card"], padding=True, return_tensors="pt")
    ours.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(enc["input_ids"], enc["attention_mask"]),
                                   twin(enc["input_ids"], enc["attention_mask"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_intent_run_reports_sane_figures(method):
    splits = make_intent_dataset(24, 12, seed=0)
    res = run_intent(splits, IntentRunConfig(method=method, steps=3, batch_size=4, max_length=24),
                     keep_deltas=method == "full")
    assert 0.0 <= res.accuracy <= 1.0 and 0.0 <= res.macro_f1 <= 1.0
    assert (res.n_train, res.n_test, len(res.losses)) == (24, 12, 3) and res.step_seconds > 0
    assert res.peak_train_bytes > res.model_bytes > 0
    if method == "full":
        assert res.trainable_params == res.total_params > 22_000_000
        assert len(res.deltas) == 12 and all(d.abs().max() > 0 for d in res.deltas.values())
    else:  # LoRA on 36 linear layers (r=8) + the 12-way head; NF4 + double quant base
        assert res.trainable_params == sum(8 * (i + o) for i, o in _minilm_linear_shapes()) + 384 * 12 + 12
        assert res.base_bytes_per_param <= 0.52
    with pytest.raises(ValueError, match="method must be one of"):
        IntentRunConfig(method="adapter")


def _minilm_linear_shapes():
    per_layer = [(384, 384)] * 4 + [(384, 1536), (1536, 384)]
    return per_layer * 6


def test_pii_sft_records_are_masked_by_mlcore_privacy():
    records = pii_sft_records(12, seed=0)
    held = pii_sft_records(6, seed=1, heldout=True)
    assert len(records) == 12 and len(held) == 6
    for rec in records + held:
        assert rec["instruction"] == INSTRUCTION
        assert rec["response"] == mask_pii(rec["input"]) != rec["input"]
        assert "[" in rec["response"]
    assert not {r["input"] for r in records} & {r["input"] for r in held}
    with pytest.raises(ValueError, match="n must be a positive int"):
        pii_sft_records(0)


def test_sft_run_exports_equal_logits_in_peft_and_after_merge():
    model, tok = load_tiny("target")
    res = run_pii_sft(n_train=8, n_eval=4, steps=3, batch_size=4, lr=1e-2, n_generate=1, max_new_tokens=4,
                      model=model, tokenizer=tok)
    assert len(res.history) == 3 and res.history[0]["loss"] > 0
    assert res.exports["lora_effect_max_abs"] > 1e-2  # the adapter changes the logits, so the checks can fail
    assert res.exports["peft_max_abs_diff"] < 1e-4  # PEFT's LoRA on to_hf() with our adapter
    assert res.exports["merged_max_abs_diff"] < 1e-4
    assert res.exports["reloaded_max_abs_diff"] < 1e-4
    assert res.trainable_params < 0.1 * res.total_params
    assert set(res.generations[0]) == {"input", "target", "before", "after"}
    assert not lora_layers(model)  # merged and unloaded: a plain Transformer again


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_lora_param_count_formula_equals_apply_lora(mlp):
    from mlcore.finetune.measure import lora_param_count
    from mlcore.model import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=64, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=80, mlp=mlp,
                            max_seq_len=16)
    for r, targets in ((4, None), (8, ("q_proj", "v_proj"))):
        config = LoraConfig(r=r, lora_alpha=r, target_modules=list(targets) if targets else "all-linear")
        model = apply_lora(Transformer(cfg), config, verbose=False)
        assert lora_param_count(cfg, r, targets) == trainable_parameters(model)[0]
    with pytest.raises(ValueError, match="not linear layers"):
        lora_param_count(cfg, 4, ("qkv_proj",))
    with pytest.raises(ValueError, match="r must be a positive int"):
        lora_param_count(cfg, 0)


def test_classifier_and_run_config_bad_input(classifier):
    from mlcore.finetune.encoder_classifier import EncoderClassifier

    with pytest.raises(ValueError, match="num_labels must be an int >= 2"):
        EncoderClassifier(classifier[0].encoder, 1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        IntentRunConfig(steps=0)
    assert IntentRunConfig(method="full").lr == 5e-5 and IntentRunConfig(method="lora").lr == 1e-3
