"""One training loop (accelerate) for pretraining and fine-tuning; checkpoints in safetensors.

``train(model, data, TrainConfig(...))`` runs AdamW with warm-up + cosine, gradient accumulation and clipping,
periodic held-out loss / perplexity and resumable safetensors checkpoints. ``mlcore.training.pretrain`` trains
the project's small target and draft models; ``mlcore.training.assets.load_tiny`` loads them.
``TrainConfig(dp=True, ...)`` turns the loop into DP-SGD; ``mlcore.training.dp`` holds it and the privacy
accountant (``from mlcore.training.dp import epsilon, noise_multiplier_for``).
"""

from .assets import load_tiny, tiny_dir
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import batch_indices, load_text_dataset, pack_tokens, tokenize_and_pack
from .loop import TrainResult, build_optimizer, evaluate, train
from .loss import IGNORE_INDEX, causal_lm_labels, causal_lm_loss, causal_lm_loss_sum
from .plots import plot_loss_curves
from .schedule import cosine_with_warmup

__all__ = [
    "IGNORE_INDEX",
    "TrainConfig",
    "TrainResult",
    "batch_indices",
    "build_optimizer",
    "causal_lm_labels",
    "causal_lm_loss",
    "causal_lm_loss_sum",
    "cosine_with_warmup",
    "evaluate",
    "latest_checkpoint",
    "load_tiny",
    "load_checkpoint",
    "load_text_dataset",
    "pack_tokens",
    "plot_loss_curves",
    "save_checkpoint",
    "tiny_dir",
    "tokenize_and_pack",
    "train",
]
