"""LoRA fine-tuning from scratch, interchangeable with PEFT (Hu et al. 2021; rsLoRA, Kalajdzievski 2023).

    from mlcore.finetune import LoraConfig, apply_lora, merge_lora, save_adapter, load_adapter
    apply_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))   # any nn.Module
    ...train: only lora_A / lora_B require grad...
    save_adapter(model, "out/adapter")          # PEFT's adapter_config.json + adapter_model.safetensors
    load_adapter(fresh_model, "out/adapter")    # also reads folders written by PeftModel.save_pretrained
    merge_lora(model, unload=True)              # W <- W + (alpha / r) B A, plain model again

- ``config``: :class:`LoraConfig` and its PEFT ``adapter_config.json`` mapping.
- ``lora``: :class:`LoraLinear`, the layer ``base(x) + B A dropout(x) · scaling``.
- ``inject``: target matching (PEFT's rule), :func:`apply_lora`, :func:`merge_lora`, :func:`unmerge_lora`.
- ``adapter_io``: :func:`save_adapter` / :func:`load_adapter` in PEFT's format.
- ``sft``: instruction / response records, a chat template, prompt tokens masked out of the loss (-100).
- ``intent_data`` / ``intent_run``: a synthetic card-issuer intent set and full / LoRA / QLoRA runs on MiniLM;
  ``sft_run``: LoRA instruction tuning of the tiny decoder; ``distributed``: the same under accelerate (DDP).
- ``qlora``: :func:`prepare_qlora`, NF4 + double quantization under the same LoRA layers (Dettmers et al. 2023).
"""

from mlcore.finetune.adapter_io import adapter_state_dict, load_adapter, read_adapter, save_adapter
from mlcore.finetune.config import LoraConfig
from mlcore.finetune.inject import (
    apply_lora,
    find_targets,
    lora_layers,
    merge_lora,
    trainable_parameters,
    unmerge_lora,
)
from mlcore.finetune.intent_data import make_intent_dataset
from mlcore.finetune.lora import LoraLinear
from mlcore.finetune.qlora import dequantize_lora_bases, prepare_qlora
from mlcore.finetune.sft import ChatTemplate, collate_sft, load_sft_records, sft_dataset, tokenize_sft

__all__ = [
    "LoraConfig", "LoraLinear", "apply_lora", "merge_lora", "unmerge_lora", "save_adapter", "load_adapter",
    "trainable_parameters", "find_targets", "lora_layers", "adapter_state_dict", "read_adapter",
    "prepare_qlora", "dequantize_lora_bases",
    "ChatTemplate", "load_sft_records", "tokenize_sft", "collate_sft", "sft_dataset", "make_intent_dataset",
]
