"""Per-example gradients, the first ingredient of DP-SGD (Abadi et al. 2016, "Deep Learning with Differential
Privacy"): clipping needs the gradient of every example's own loss, not only their sum.

Two ways, which agree to float64 round-off (and with Opacus' ``GradSampleModule``, see the tests):

1. **torch.func** (any layer): ``vmap(grad(loss_of_one_example))`` over the batch. ``grad`` differentiates the
   loss of ONE example with respect to the parameters; ``vmap`` runs that function on every row of the batch
   at once, vectorising the batch dimension through forward and backward. Works for embeddings, norms,
   attention, LoRA adapters: everything the model is built of (Horace He et al., functorch, 2021).
2. **the outer product written out** (``nn.Linear``): for ``y = x W^T + b`` applied at every position t,

       dL_b / dW = sum_t  g_{b,t} (outer) x_{b,t}      (B, out, in)       dL_b / db = sum_t g_{b,t}   (B, out)

   with ``x`` the layer input (B, T, in) and ``g = dL/dy`` (B, T, out), both available from one ordinary
   backward pass of the summed loss (Goodfellow 2015, "Efficient per-example gradient computations").

BatchNorm mixes examples (its statistics are over the batch), so an example's "own" gradient does not
exist: :func:`check_per_sample_support` refuses such models, naming the layers, as Opacus does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

Batch = Mapping[str, torch.Tensor]
# loss of ONE example: (logits (1, T, V), the example's row of every batch tensor, each (1, T)) -> (loss, aux)
ExampleLoss = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]

_BATCH_MIXING = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def check_per_sample_support(model: nn.Module) -> None:
    """Raise ``ValueError`` naming every layer whose output for one example depends on the others
    (BatchNorm in training mode, with running statistics, is the classic case): DP-SGD cannot clip them."""
    bad = [f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()
           if isinstance(m, _BATCH_MIXING)]
    bad += [f"{name} (InstanceNorm with track_running_stats)" for name, m in model.named_modules()
            if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats]
    if bad:
        raise ValueError(f"per-sample gradients are undefined for layers that mix examples of a batch: "
                         f"{', '.join(bad)}; replace BatchNorm by GroupNorm or LayerNorm for DP training")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters DP-SGD privatises: those with ``requires_grad`` (only the adapters after ``apply_lora``).
    Tied parameters appear once (``named_parameters`` deduplicates), under their first name."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters (every parameter has requires_grad=False)")
    return params


def model_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``model(input_ids, attention_mask=...)`` -> logits (B, T, V). mlcore's Transformer is called with
    ``validate=False``: its input checks read values on the host, which ``vmap`` cannot do (the batch is
    validated once, outside, by the caller)."""
    kwargs: dict = {"attention_mask": batch.get("attention_mask")}
    if "validate" in inspect.signature(type(model).forward).parameters:  # the class's (accelerate may wrap forward)
        kwargs["validate"] = False
    elif kwargs["attention_mask"] is not None and _hf_attn_implementation(model) is not None:
        kwargs["attention_mask"] = hf_4d_attention_mask(model, kwargs["attention_mask"])
    out = model(batch["input_ids"], **kwargs)
    return out if isinstance(out, torch.Tensor) else out.logits


def _hf_attn_implementation(model: nn.Module) -> str | None:
    """The attention backend of a transformers model (``config._attn_implementation``), None for other models."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return impl if isinstance(impl, str) else None


def hf_4d_attention_mask(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """The (B, 1, T, T) causal + padding mask a transformers model would build from a 2D ``attention_mask``.

    transformers derives its 4D mask from the 2D one with data-dependent checks (``.item()``, ``all()``) that
    ``vmap`` cannot trace, but uses a 4D mask as given. So we build it here: boolean (True = attend) for
    ``sdpa``, additive (0 / dtype min) for ``eager`` and the rest. Every query also attends to itself, so a
    left-padding position has a finite output (transformers' own result there is NaN or backend-dependent;
    right padding and all-ones masks give exactly transformers' gradients). Flash attention takes no 4D mask:
    refused, use no mask, ``attn_implementation="sdpa"``/``"eager"``, or mlcore's own Transformer.
    """
    impl = _hf_attn_implementation(model)
    if impl is not None and "flash" in impl:
        raise ValueError(f"per-sample gradients of a transformers model with attn_implementation={impl!r} and an "
                         "attention_mask are not supported (vmap cannot trace its mask checks and flash attention "
                         "takes no 4D mask); load it with attn_implementation='sdpa' or 'eager', drop the mask, "
                         "or use mlcore's own Transformer")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got shape {tuple(attention_mask.shape)}")
    t = attention_mask.size(-1)
    window = getattr(model.config, "sliding_window", None)
    if isinstance(window, int) and t > window:  # this mask is plain causal: it would attend past the window
        raise ValueError(f"a sequence of {t} tokens exceeds this transformers model's sliding_window={window}, "
                         "which the mask built for per-sample gradients does not apply; use shorter sequences "
                         "or mlcore's own Transformer")
    eye = torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    keep = (eye.cumsum(0).bool() & attention_mask[:, None, None, :].bool()) | eye  # causal & key is a token
    if impl == "sdpa":
        return keep
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def _vocab_size(model: nn.Module) -> int | None:
    """The model's vocabulary size (``config.vocab_size`` of mlcore's and transformers' models), else None."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    embeddings = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    return embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else None


def check_batch_values(model: nn.Module, batch: Batch) -> None:
    """The value checks the model's forward cannot do under ``vmap`` (it reads values on the host), done once
    here: token ids in ``[0, vocab_size)``, a 0/1 ``attention_mask``, labels in ``[0, vocab_size)`` or -100.
    Without them a negative id or label was silently read as another token (a wrong gradient) and one past the
    vocabulary failed deep inside vmap."""
    vocab = _vocab_size(model)
    upper = f"[0, vocab_size={vocab})" if vocab is not None else "[0, vocab_size)"
    for key, ignore in (("input_ids", None), ("labels", -100)):
        ids = batch.get(key)
        if ids is None or ids.numel() == 0:
            continue
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{key} must hold integer token ids, got dtype {ids.dtype}")
        real = ids[ids != ignore] if ignore is not None else ids
        if real.numel() and (int(real.min()) < 0 or (vocab is not None and int(real.max()) >= vocab)):
            raise ValueError(f"{key} must lie in {upper}{' or be -100 (ignored)' if ignore else ''}, got values "
                             f"in [{int(real.min())}, {int(real.max())}] (tokenizer/model vocab mismatch?)")
    mask = batch.get("attention_mask")
    if mask is not None and mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"attention_mask must hold only 0 (pad) and 1 (token), got values "
                         f"{sorted(set(mask.unique().tolist()))[:6]}")


def per_sample_grads(model: nn.Module, batch: Batch, loss_fn: ExampleLoss,
                     params: Mapping[str, torch.Tensor] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of each example's loss w.r.t. the trainable parameters, by ``vmap(grad(...))``.

    Args:
        model: maps ``input_ids (B, T)`` (+ ``attention_mask``) to logits ``(B, T, V)``.
        batch: tensors with a leading batch dimension B (``input_ids`` required).
        loss_fn: ``(logits (1, T, V), row) -> (loss, aux)``: the loss of one example and anything to carry out
            (e.g. its summed NLL and target count for logging), each a tensor.
        params: the parameters to differentiate (default: :func:`trainable_parameters`); the others are
            passed as constants (the frozen base of DP-LoRA).
    Returns:
        ``({name: (B, *param.shape)}, aux (B, ...))``.
    """
    check_per_sample_support(model)
    check_batch_values(model, batch)
    params = dict(params) if params is not None else {n: p.detach() for n, p in trainable_parameters(model).items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def one_example(p: dict[str, torch.Tensor], row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        row1 = {k: v.unsqueeze(0) for k, v in row.items()}  # vmap strips the batch dim; the model wants (1, T)
        return loss_fn(_call(model, {**frozen, **p}, buffers, row1), row1)

    try:
        grads, aux = vmap(grad(one_example, has_aux=True), in_dims=(None, 0), randomness="different")(
            params, dict(batch))
    except RuntimeError as err:
        if "vmap" not in str(err) or "data-dependent" not in str(err):
            raise
        raise ValueError(f"per-sample gradients (torch.func.vmap) cannot trace {type(model).__name__}'s forward on "
                         "this batch: it reads a tensor value on the host (.item(), int(t), or an if on a tensor). "
                         f"vmap said: {str(err).splitlines()[0][:160]}") from err
    return grads, aux


def _call(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
          batch: Batch) -> torch.Tensor:
    """``model_logits`` with ``params`` and ``buffers`` swapped in (torch.func.functional_call)."""
    holder = _Logits(model)
    return functional_call(holder, ({f"m.{k}": v for k, v in params.items()},
                                    {f"m.{k}": v for k, v in buffers.items()}), (batch,))


class _Logits(nn.Module):
    """A wrapper so ``functional_call`` can run :func:`model_logits` (which takes a batch dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return model_logits(self.m, batch)


def linear_per_sample_grads(activations: torch.Tensor, grad_output: torch.Tensor, *, bias: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-example gradients of ``nn.Linear`` from its input and output gradient (the outer-product form).

    Args:
        activations: x, the layer input, (B, ..., in) (e.g. (B, T, in)).
        grad_output: g = dL/dy for the summed loss, (B, ..., out). Example b's loss only reaches row b.
    Returns:
        weight gradients (B, out, in) = sum over positions of g (outer) x, and bias gradients (B, out) or None.
    """
    if activations.shape[:-1] != grad_output.shape[:-1]:
        raise ValueError(f"activations (B, ..., in) and grad_output (B, ..., out) must agree on (B, ...), got "
                         f"{tuple(activations.shape)} and {tuple(grad_output.shape)}")
    x = activations.reshape(activations.size(0), -1, activations.size(-1))  # (B, T, in)
    g = grad_output.reshape(grad_output.size(0), -1, grad_output.size(-1))  # (B, T, out)
    weight = torch.bmm(g.transpose(1, 2), x)  # (B, out, T) @ (B, T, in) = sum_t g_t x_t^T
    return weight, (g.sum(1) if bias else None)


class LinearGradSampler:
    """Hooks that compute the per-example gradients of every ``nn.Linear`` in ``model`` by the outer product
    during an ordinary ``loss.sum().backward()``; after it, ``grads[param_name]`` is (B, *shape).

    Only plain Linear layers, each called once per forward, are covered (the written-out form); use
    :func:`per_sample_grads` for the rest. Use as a context manager: the hooks are removed on exit."""

    def __init__(self, model: nn.Module) -> None:
        check_per_sample_support(model)
        self.model = model
        self.grads: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._inputs: dict[str, torch.Tensor] = {}

    def __enter__(self) -> LinearGradSampler:
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad:
                self._handles.append(module.register_forward_hook(self._save_input(name)))
                self._handles.append(module.register_full_backward_hook(self._grad(name, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _save_input(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._inputs[name] = inputs[0].detach()
        return hook

    def _grad(self, name: str, module: nn.Linear):
        def hook(mod: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
            w, b = linear_per_sample_grads(self._inputs.pop(name), grad_output[0].detach(),
                                           bias=module.bias is not None)
            prefix = f"{name}." if name else ""
            for key, value in ((f"{prefix}weight", w), (f"{prefix}bias", b)):
                if value is not None:
                    self.grads[key] = value
        return hook
