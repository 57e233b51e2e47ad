"""Server settings (one dataclass; ``python -m mlcore.serve`` fills it from the command line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

from mlcore.privacy.detect import check_str_list
from mlcore.serve.engine import EngineConfig
from mlcore.serve.guard import PII_POLICIES


@dataclass
class ServeConfig:
    """What the HTTP layer enforces. Defaults are the safe ones: loopback only, keys required, PII masked."""

    model_name: str = "tiny-target"
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 64 * 1024  # larger bodies get 413 before they are read in full
    max_prompt_tokens: int | None = None  # None: the model's length - 1
    default_max_tokens: int = 16
    pii_policy: str = "mask"  # "mask" | "block" | "allow" for PII in prompts
    blocklist: tuple[str, ...] = ()
    audit_path: str | None = None
    default_rpm: float = 600.0
    max_queue: int = 256  # requests waiting in the engine beyond this get 503 (load shedding)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.pii_policy not in PII_POLICIES:
            raise ValueError(f"pii_policy must be one of {PII_POLICIES}, got {self.pii_policy!r}")
        # refused at construction, naming the field: later they break every request (500, or 503 for max_queue;
        # default_max_tokens=1.5 answered every completion without max_tokens a 400 about a field it never sent,
        # a NaN max_body_bytes let any body through, a string blocklist raised in every request);
        # max_prompt_tokens > the model's context is checked by create_app, which knows the model
        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.max_body_bytes) or self.max_body_bytes < 256:
            raise ValueError(f"max_body_bytes must be an int >= 256, got {self.max_body_bytes!r}")
        if self.max_prompt_tokens is not None and (not is_int(self.max_prompt_tokens) or self.max_prompt_tokens < 1):
            raise ValueError(f"max_prompt_tokens must be an int >= 1 or None, got {self.max_prompt_tokens!r}")
        for name in ("default_max_tokens", "max_queue"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not is_int(self.port) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in [0, 65535], got {self.port!r}")
        rpm = self.default_rpm
        if not isinstance(rpm, Real) or isinstance(rpm, bool) or not rpm > 0:  # `not >` also refuses NaN
            raise ValueError(f"default_rpm must be a number > 0, got {rpm!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty str, got {self.host!r}")
        self.blocklist = check_str_list(self.blocklist, "blocklist")
        if not isinstance(self.engine, EngineConfig):
            raise TypeError(f"engine must be an EngineConfig, got {type(self.engine).__name__}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: pass both or neither")
