"""The hyper-parameters of a LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen weight ``W0`` (out x in) gets a trainable low-rank update ``ΔW = B A`` with ``A`` (r x in) and ``B``
(out x r), so a layer computes

    h = W0 x + (alpha / r) · B A x            (LoRA)
    h = W0 x + (alpha / sqrt(r)) · B A x      (rsLoRA, Kalajdzievski 2023, "A Rank Stabilization Scaling Factor")

``LoraConfig`` names the same knobs as ``peft.LoraConfig`` and converts to and from the ``adapter_config.json``
that PEFT writes, so an adapter folder means the same thing to mlcore and to PEFT.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

INITS = ("kaiming", "gaussian")
BIASES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"

# PEFT adapter_config.json fields that change what an adapter computes and that mlcore does not implement:
# a folder that sets one of them is refused rather than silently loaded as something else.
_UNSUPPORTED_WHEN_SET = (
    "use_dora", "lora_bias", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
    "exclude_modules", "target_parameters", "trainable_token_indices", "layer_replication", "use_qalora",
    "alora_invocation_tokens", "arrow_config", "use_bdlora",
    # LoRA variants: KaSA truncates the base weight's SVD and adds a singular-value diagonal, MonteCLoRA samples
    # the update, VeLoRA replaces A's backward (other gradients); their extra weights alone would not say which
    "kasa_config", "monteclora_config", "velora_config",
)

# init_lora_weights values that only choose the starting A and B, which the saved weights then replace: loading
# such a folder gives the trained model whatever the init was.
_PLAIN_INIT_STRINGS = ("gaussian", "orthogonal")
# inits that rewrite the base weight (PiSSA / OLoRA / CorDA / MiCA: W_res = W - s B0 A0; LoftQ: quantization-aware
# W) or derive it from data (EVA, LoRA-GA); PEFT re-runs them when loading, so the adapter is only right on that
# rewritten base, which mlcore does not reproduce. Matched as prefixes ("pissa_niter_4", "corda_...").
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "eva", "lora_ga", "mica")


def check_lora_alpha(where: str, value: Any) -> None:
    """ValueError unless ``value`` is a positive finite number (not a bool)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{where} lora_alpha must be a positive finite number, got {value!r}")


def check_lora_dropout(where: str, value: Any) -> None:
    """ValueError unless ``value`` is a number in [0, 1) (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{where} lora_dropout must be in [0, 1), got {value!r}")


def check_use_rslora(where: str, value: Any) -> None:
    """ValueError unless ``value`` is a bool (a string like "false" would read as True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{where} use_rslora must be a bool, got {value!r}")


def _init_from_peft(init: Any) -> str:
    """PEFT's ``init_lora_weights`` -> mlcore's ``init``; refuses inits whose adapter needs a rewritten base."""
    if init is True or init is False:  # False: random A and B, replaced by the saved weights anyway
        return "kaiming"
    if isinstance(init, str):
        low = init.lower()
        if low in _PLAIN_INIT_STRINGS:
            return "gaussian" if low == "gaussian" else "kaiming"
        if low.startswith(_BASE_REWRITING_INITS):
            raise ValueError(f"adapter config sets init_lora_weights={init!r}: that init rewrites (or is fitted "
                             "to) the base weight, which PEFT redoes on loading and mlcore does not, so the "
                             "adapter would load as a different model")
    raise ValueError(f"adapter config init_lora_weights must be true, false, 'gaussian' or 'orthogonal', "
                     f"got {init!r}")


@dataclass
class LoraConfig:
    """What to adapt and how.

    r: rank of the update (> 0). lora_alpha: numerator of the scaling (``alpha / r``, or ``alpha / sqrt(r)`` with
    ``use_rslora``). target_modules: PEFT's rule: a list of names, each matching a module whose full name equals
    it or ends in ``"." + name``; a string is a regular expression that must match the full module name; the
    string ``"all-linear"`` targets every linear layer except the output head. lora_dropout: dropout on the
    input of the low-rank path only. init: ``"kaiming"`` (A Kaiming-uniform with ``a = sqrt(5)``, as
    ``nn.Linear`` and PEFT) or ``"gaussian"`` (A ~ N(0, 1/r^2), PEFT's ``"gaussian"``); B starts at zero either
    way, so an adapted model starts out equal to its base. bias: which biases train besides A and B
    (``"none"``, ``"all"``, or ``"lora_only"`` = the biases of adapted layers). modules_to_save: modules
    trained in full and saved with the adapter (e.g. a fresh classification head), matched by PEFT's rule
    for them: every module whose full name ends in a name, with no "." boundary (``"head"`` matches
    ``lm_head``, ``"norm"`` every ``*_layernorm`` and ``norm``). ensure_weight_tying: PEFT's flag that keeps a
    tied embedding / ``lm_head`` pair tied when one of them is trained (a module to save, or a LoRA target);
    mlcore trains such a module apart from its partner (untied, PEFT's default), so :func:`apply_lora` refuses
    the flag where it would change anything and accepts it elsewhere (PEFT then only warns).
    """

    r: int
    lora_alpha: float
    target_modules: list[str] | str
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init: str = "kaiming"
    bias: str = "none"
    modules_to_save: list[str] | None = field(default=None)
    ensure_weight_tying: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive int, got {self.r!r}")
        check_lora_alpha("LoraConfig", self.lora_alpha)
        check_lora_dropout("LoraConfig", self.lora_dropout)
        check_use_rslora("LoraConfig", self.use_rslora)
        if self.init not in INITS:
            raise ValueError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}")
        if self.bias not in BIASES:
            raise ValueError(f"LoraConfig.bias must be one of {BIASES}, got {self.bias!r}")
        if not isinstance(self.ensure_weight_tying, bool):
            raise ValueError(f"LoraConfig.ensure_weight_tying must be a bool, got {self.ensure_weight_tying!r}")
        self.target_modules = _check_names("target_modules", self.target_modules, allow_regex=True)
        if self.modules_to_save is not None:
            self.modules_to_save = _check_names("modules_to_save", self.modules_to_save, allow_regex=False)

    @property
    def scaling(self) -> float:
        """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    # -- PEFT's adapter_config.json ----------------------------------------------------------------

    def to_peft_dict(self, *, target_modules: list[str] | str | None = None,
                     base_model_name_or_path: str | None = None, fan_in_fan_out: bool = False) -> dict[str, Any]:
        """The fields of PEFT's ``adapter_config.json`` for this config (``target_modules`` may be overridden
        by the resolved module names, as PEFT does for ``"all-linear"``)."""
        targets = self.target_modules if target_modules is None else target_modules
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": base_model_name_or_path,
            "revision": None,
            "inference_mode": True,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": float(self.lora_dropout),
            "target_modules": targets if isinstance(targets, str) else sorted(targets),
            "use_rslora": self.use_rslora,
            "init_lora_weights": True if self.init == "kaiming" else "gaussian",
            "bias": self.bias,
            "fan_in_fan_out": fan_in_fan_out,
            "modules_to_save": self.modules_to_save,
            "use_dora": False,
            "lora_bias": False,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": None,
            "layers_pattern": None,
            "exclude_modules": None,
            "target_parameters": None,
            "ensure_weight_tying": self.ensure_weight_tying,
        }

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> LoraConfig:
        """Read a PEFT ``adapter_config.json`` (as a dict). Features mlcore does not implement raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"adapter config must be a JSON object, got {type(d).__name__}")
        if d.get("peft_type") != "LORA":
            raise ValueError(f"adapter config peft_type must be 'LORA', got {d.get('peft_type')!r}")
        for key in ("r", "lora_alpha", "target_modules"):
            if key not in d:
                raise ValueError(f"adapter config is missing the field {key!r}")
        for key in _UNSUPPORTED_WHEN_SET:
            if d.get(key) not in (None, False, {}, [], ""):
                raise ValueError(f"adapter config sets {key}={d[key]!r}, which mlcore's LoRA does not support")
        init = _init_from_peft(d.get("init_lora_weights", True))
        return cls(
            r=d["r"], lora_alpha=d["lora_alpha"], target_modules=d["target_modules"],
            lora_dropout=d.get("lora_dropout", 0.0) or 0.0,
            # None (absent) is False; any other non-bool (the string "false") is refused, not read as True
            use_rslora=False if d.get("use_rslora") is None else d["use_rslora"],
            init=init,
            bias=d.get("bias", "none") or "none", modules_to_save=d.get("modules_to_save") or None,
            # None (absent: PEFT before 0.18) is False; a non-bool is refused by __post_init__
            ensure_weight_tying=False if d.get("ensure_weight_tying") is None else d["ensure_weight_tying"],
        )


def _check_names(arg: str, value: Any, *, allow_regex: bool) -> list[str] | str:
    if isinstance(value, str):
        if not allow_regex:
            raise ValueError(f"LoraConfig.{arg} must be a list of module names, got the string {value!r}")
        if not value:
            raise ValueError(f"LoraConfig.{arg} must not be empty")
        if value.lower() == ALL_LINEAR:
            return ALL_LINEAR
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"LoraConfig.{arg} is not a valid regular expression: {value!r} ({e})") from None
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        names = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"LoraConfig.{arg} must be a non-empty list of non-empty strings, got {value!r}")
        return names
    raise ValueError(f"LoraConfig.{arg} must be a list of module names or a regex string, got {value!r}")
