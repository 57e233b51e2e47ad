"""One training loop for pretraining and fine-tuning, on Hugging Face ``accelerate``.

Per optimizer step ``s`` (the shape of nanoGPT's ``train.py``, with accelerate doing device placement,
mixed precision and the bookkeeping of gradient accumulation):

1. set the learning rate to ``lr * f(s)``, ``f`` the warm-up + cosine multiplier (``schedule.py``);
2. draw ``k = grad_accum_steps`` micro-batches, a pure function of ``(seed, s)`` (``data.py``);
3. for each: forward, summed next-token cross-entropy over its targets divided by the number of targets
   in *all k* micro-batches, backward (gradients add up), so the step equals one batch ``k`` times as big;
4. clip the global gradient norm, take an AdamW step (Loshchilov & Hutter, 2019; weight decay on the
   weight matrices and embeddings only, never on norm gains or biases), zero the gradients.

Data parallel (``accelerate launch`` with several processes, DDP; gloo on CPU): ``batch_size`` stays the
*global* micro-batch. Every process draws the same indices, takes its contiguous share of ``batch_size / N``
rows and scales its summed loss by ``N / n_targets`` of the whole micro-batch; DDP averages the gradients over
the ``N`` processes, so a step equals the same step in one process on the whole batch.

With ``TrainConfig(dp=True)`` steps 2-4 become DP-SGD (``dp.py``): a Poisson-sampled logical batch, per-example
gradients clipped to C and summed chunk by chunk, Gaussian noise once, then the AdamW step; epsilon is logged.

Randomness: dropout draws from torch's global generator, so the run seeds it with ``config.seed`` inside
``torch.random.fork_rng`` (the caller's RNG state is restored on return); batches and DP noise come from
``torch.Generator`` objects that are pure functions of ``(seed, step)``.

Every ``eval_every`` steps it measures the loss on held-out data and its perplexity ``exp(loss)``; every
``checkpoint_every`` steps it writes a safetensors checkpoint (``checkpoint.py``) from which
``resume_from=`` continues with exactly the losses an uninterrupted run would have had.

The model may be any ``nn.Module`` mapping ``(input_ids, attention_mask=...)`` to logits ``(B, T, V)`` (or to
an object with ``.logits``, as transformers models return), e.g. :class:`mlcore.model.Transformer`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Batch, batch_indices, check_data, get_batch, iterate_in_order
from .loss import causal_lm_labels, causal_lm_loss_sum
from .schedule import cosine_with_warmup

ForwardFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


@dataclass
class TrainResult:
    """What :func:`train` measured: one dict per logged step in ``history`` (``step``, ``loss``, ``lr``,
    ``grad_norm``, ``tokens``, ``tokens_per_s``), one per evaluation in ``evals`` (``step``, ``loss``,
    ``perplexity``), and totals for this call (``steps`` run, ``tokens`` seen, wall ``seconds``).
    ``total_tokens`` (and ``history``'s cumulative ``tokens``) count the whole run, steps before a resume
    included."""

    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    total_tokens: int = 0

    @property
    def final_eval(self) -> dict[str, float] | None:
        return self.evals[-1] if self.evals else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``model(input_ids, attention_mask=...)`` returning logits ``(B, T, V)``."""
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return out if isinstance(out, torch.Tensor) else out.logits


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of dimension >= 2 (matrices, embeddings) and none on 1-D ones
    (norm gains, biases), as in GPT-2/nanoGPT. Frozen parameters (``requires_grad=False``) are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (every parameter has requires_grad=False)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not config.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _make_accelerator(config: TrainConfig):
    """An ``Accelerator`` for this run. accelerate keeps its device / precision settings in a process-wide
    singleton that refuses to change; in a single process (notebooks, tests, one script training two models
    with different settings) we clear it and start afresh."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kwargs = {"cpu": config.cpu, "mixed_precision": _mixed_precision(config),
              "gradient_accumulation_steps": config.grad_accum_steps}
    try:
        return Accelerator(**kwargs)
    except ValueError:
        if PartialState().num_processes != 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def _batch_labels(batch: Batch) -> torch.Tensor:
    if "labels" in batch:
        return batch["labels"]
    return causal_lm_labels(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                            loss_mask=batch.get("loss_mask"))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Mapping[str, torch.Tensor], *, batch_size: int = 8,
             max_batches: int | None = None, device: torch.device | str | None = None,
             forward: ForwardFn = default_forward) -> dict[str, float]:
    """Mean next-token loss over ``data`` (token-weighted) and its perplexity ``exp(loss)``."""
    for name, value, low in (("batch_size", batch_size, 1), ("max_batches", max_batches, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise ValueError(f"evaluate: {name} must be a positive int{' or None' if name == 'max_batches' else ''}"
                             f", got {value!r}")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    total, count = 0.0, 0
    for batch in iterate_in_order(data, batch_size, max_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        nll, n = causal_lm_loss_sum(forward(model, batch), _batch_labels(batch))
        total, count = total + float(nll), count + n
    model.train(was_training)
    if count == 0:
        raise ValueError("eval_data has no counted target token")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0))}


def train(
    model: torch.nn.Module,
    train_data: Mapping[str, torch.Tensor],
    config: TrainConfig,
    *,
    eval_data: Mapping[str, torch.Tensor] | None = None,
    resume_from: str | Path | None = None,
    forward: ForwardFn = default_forward,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` for ``config.max_steps`` optimizer steps.

    Args:
        model: maps ``input_ids (B, T)`` (and ``attention_mask``) to logits ``(B, T, V)``.
        train_data: ``{"input_ids": LongTensor (N, T)}`` plus optional ``attention_mask`` (1 = token, 0 = pad),
            ``loss_mask`` (1 = learn this token; SFT masks the prompt) or explicit ``labels`` (-100 = ignore).
        config: a :class:`TrainConfig`.
        eval_data: same layout; evaluated every ``config.eval_every`` steps and at the end.
        resume_from: a checkpoint folder, or ``"latest"`` for the newest one under ``config.out_dir``.
        forward: how to get logits from ``model`` and a batch (default ``model(ids, attention_mask=...)``).
        description: label of the progress bar.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(forward):
        raise ValueError(f"forward must be a callable (model, batch) -> logits, got {forward!r}")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig (TrainConfig.from_dict(d) builds one from a dict), "
                         f"got {type(config).__name__}")
    if resume_from is not None and str(resume_from) == "latest" and config.out_dir is None:
        raise ValueError("resume_from='latest' looks under config.out_dir/checkpoints, but config.out_dir is None")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and not config.cpu else []
    with torch.random.fork_rng(devices=devices):  # seed dropout here without touching the caller's RNG state
        torch.manual_seed(config.seed)  # a resume restores the saved RNG state instead
        return _train(model, train_data, config, eval_data=eval_data, resume_from=resume_from, forward=forward,
                      description=description)


def _train(model: torch.nn.Module, train_data: Mapping[str, torch.Tensor], config: TrainConfig, *,
           eval_data: Mapping[str, torch.Tensor] | None, resume_from: str | Path | None, forward: ForwardFn,
           description: str) -> TrainResult:
    n_examples = check_data(train_data, "train_data")
    if eval_data is not None:
        check_data(eval_data, "eval_data")
    accelerator = _make_accelerator(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size={config.batch_size} (the global micro-batch) must be divisible "
                         f"by the number of processes {world}")
    share = slice(rank * config.batch_size // world, (rank + 1) * config.batch_size // world)
    dp = None
    if config.dp:
        from .dp import DPTraining

        if world > 1:
            raise ValueError(f"TrainConfig.dp=True runs in one process, got {world} processes")
        if forward is not default_forward:
            raise ValueError("TrainConfig.dp=True computes per-example gradients with the default forward; "
                             "a custom forward= is not supported")
        dp = DPTraining(model, config, n_examples)
    optimizer = build_optimizer(model, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    result = TrainResult()
    start = 0
    tokens_before = 0  # tokens of the steps before a resume, so history's cumulative count continues
    if resume_from is not None:
        path = latest_checkpoint(config.out_dir) if str(resume_from) == "latest" else Path(resume_from)
        if path is None:
            raise FileNotFoundError(f"resume_from='latest' found no checkpoint under {config.out_dir!r}/checkpoints")
        meta = load_checkpoint(path, model=raw_model, optimizer=optimizer.optimizer)
        start = meta["step"]
        result.history = list(meta["extra"].get("history", []))
        result.evals = list(meta["extra"].get("evals", []))
        # older checkpoints lack "tokens": the last logged count is the best we know (exact when log_every=1)
        tokens_before = int(meta["extra"].get("tokens", result.history[-1]["tokens"] if result.history else 0))
        _warn_config_mismatch(meta["extra"].get("config"), config, path)
        if dp is not None:
            dp.resume(start)

    def run_eval(step: int) -> None:
        metrics = evaluate(model, eval_data, batch_size=config.eval_batch_size or config.batch_size,
                           max_batches=config.eval_batches, device=accelerator.device, forward=forward)
        result.evals.append({"step": step, **metrics})
        if accelerator.is_main_process:
            progress.log(f"{description} step {step}: eval loss {metrics['loss']:.4f}, "
                         f"perplexity {metrics['perplexity']:.2f}")

    def checkpoint(step: int) -> None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        save_checkpoint(Path(config.out_dir) / "checkpoints" / f"step_{step:06d}", model=raw_model,
                        optimizer=optimizer.optimizer, step=step,
                        extra={"history": result.history, "evals": result.evals, "config": config.to_dict(),
                               "tokens": tokens_before + result.tokens})

    model.train()
    k = config.grad_accum_steps
    t0 = time.perf_counter()
    tokens_since, t_since = 0, t0
    progress = _Progress(config.progress and accelerator.is_main_process, description, total=config.max_steps,
                         completed=start)
    with progress:
        for step in range(start, config.max_steps):
            lr = config.lr * cosine_with_warmup(step, warmup_steps=config.warmup_steps,
                                                total_steps=config.max_steps, min_lr_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if dp is not None:
                stats = dp.step(train_data, step, _batch_labels, accelerator.device)
                optimizer.optimizer.step()  # the raw optimizer: accelerate's accumulation bookkeeping is not used
                optimizer.zero_grad(set_to_none=True)
                step_nll, n_targets, grad_norm = stats["nll"], stats["targets"] or float("nan"), stats["grad_norm"]
                result.tokens += int(stats["tokens"])
                tokens_since += int(stats["tokens"])
                micro, labels = [], []  # the DP step is done
            else:
                micro = [get_batch(train_data, batch_indices(n_examples, config.batch_size, step * k + i,
                                                             seed=config.seed)) for i in range(k)]
                labels = [_batch_labels(b) for b in micro]
                n_targets = sum(int((lab[:, 1:] != -100).sum()) for lab in labels)
                if n_targets == 0:
                    raise ValueError(f"step {step}: every target of the batch is padding or masked out")
                step_nll, grad_norm = 0.0, float("nan")
            for batch, lab in zip(micro, labels):
                if world > 1:  # this process's rows of the global micro-batch
                    batch, lab = {key: v[share] for key, v in batch.items()}, lab[share]
                batch = {key: v.to(accelerator.device) for key, v in batch.items()}
                with accelerator.accumulate(model):
                    nll, _ = causal_lm_loss_sum(forward(model, batch), lab.to(accelerator.device))
                    # accelerate divides by k for accumulation and DDP averages over the world processes; we
                    # normalize by the target count of the whole (global) step
                    accelerator.backward(nll / n_targets * k * world)
                    if accelerator.sync_gradients:
                        norm = accelerator.clip_grad_norm_(params, config.grad_clip or float("inf"))
                        grad_norm = float(norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_nll += float(nll.detach())
                result.tokens += int(batch["input_ids"].numel()) * world
                tokens_since += int(batch["input_ids"].numel()) * world
            if world > 1:
                step_nll = float(accelerator.reduce(torch.tensor(step_nll, device=accelerator.device), "sum"))
            loss = step_nll / n_targets
            if not math.isfinite(loss) and not (dp is not None and math.isnan(n_targets)):  # empty Poisson batch
                raise FloatingPointError(f"loss became {loss} at step {step}; lower config.lr or check the data")
            done = step + 1
            now = time.perf_counter()
            tok_s = tokens_since / max(now - t_since, 1e-9)
            if config.log_every and (done % config.log_every == 0 or done == config.max_steps):
                result.history.append({"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                       "tokens": tokens_before + result.tokens, "tokens_per_s": tok_s})
                if dp is not None:
                    result.history[-1].update(epsilon=stats["epsilon"], examples=stats["examples"],
                                              clipped=stats["clipped"], noise_multiplier=dp.noise_multiplier)
                    if done % max(1, config.max_steps // 10) == 0 or done == config.max_steps:
                        progress.log(f"{description} step {done}: loss {loss:.4f}, "
                                     f"epsilon {stats['epsilon']:.3f} (delta={config.dp_delta:g})")
                tokens_since, t_since = 0, now
            if eval_data is not None and ((config.eval_every and done % config.eval_every == 0)
                                          or done == config.max_steps):
                run_eval(done)
            if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.max_steps):
                checkpoint(done)
            progress.update(loss=loss, tok_s=tok_s, ev=result.final_eval,
                            eps=stats["epsilon"] if dp is not None else None)
            result.steps += 1
    result.seconds = time.perf_counter() - t0
    result.total_tokens = tokens_before + result.tokens
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # undo accelerate's autocast wrapper on forward
    if config.out_dir is not None and accelerator.is_main_process:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.out_dir) / "train_result.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result


# fields whose change makes a resumed run differ from the uninterrupted one it continues (batches, noise,
# schedule). max_steps may grow (a longer run; the cosine then stretches) and is only warned about too, since
# the learning rate of the remaining steps changes. weight_decay / betas / eps are not compared: the optimizer's
# param_groups, and so these values, come from the checkpoint.
_RESUME_FIELDS = ("seed", "batch_size", "grad_accum_steps", "lr", "min_lr_ratio", "warmup_steps", "max_steps",
                  "grad_clip", "dp", "dp_max_grad_norm", "dp_noise_multiplier", "dp_target_epsilon", "dp_delta",
                  "dp_poisson")


def _warn_config_mismatch(stored: Any, config: TrainConfig, path: Path) -> None:
    """Warn, naming the fields, when ``config`` differs from the checkpoint's config on a field that changes
    the run (the resume is still done: extending max_steps or lowering lr can be intended)."""
    if not isinstance(stored, dict):
        return
    current = config.to_dict()
    differ = [f"{name}: checkpoint {stored[name]!r}, now {current[name]!r}" for name in _RESUME_FIELDS
              if name in stored and stored[name] != current[name]]
    if differ:
        warnings.warn(f"resuming from {str(path)!r} with a config that differs from the checkpoint's "
                      f"({'; '.join(differ)}); the run will not reproduce an uninterrupted one. weight_decay, "
                      f"betas and eps come from the checkpoint's optimizer state", stacklevel=4)


class _Progress:
    """A rich progress bar with loss, eval perplexity and tokens/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, description: str, *, total: int, completed: int) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
            self.task = self.bar.add_task(description, total=total, completed=completed, stats="")

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.console.print(message)
        else:
            print(message, flush=True)

    def update(self, *, loss: float, tok_s: float, ev: dict[str, float] | None, eps: float | None = None) -> None:
        if not self.enabled:
            return
        stats = f"loss {loss:.3f}  {tok_s:,.0f} tok/s"
        if eps is not None:
            stats += f"  eps {eps:.2f}"
        if ev is not None:
            stats += f"  eval ppl {ev['perplexity']:.2f} (step {ev['step']})"
        self.bar.update(self.task, advance=1, stats=stats)
