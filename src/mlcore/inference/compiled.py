"""Compiled decoding: the per-token decode step of an mlcore ``Transformer`` through ``torch.compile``.

A decode step runs a few dozen small ops per layer; eagerly each pays Python and dispatch overhead, which is
most of a small model's step time (and on CUDA, one kernel launch each). Compiled, the step is one graph:
inductor fuses the element-wise ops (RMSNorm, RoPE, SwiGLU, the mask) into a few kernels, and on CUDA
``mode="reduce-overhead"`` records it as a CUDA graph replayed with one launch (gpt-fast's recipe).

One graph must serve every step, so nothing a step sees may change shape or Python value between steps:

    prefill (eager):   model(prompt, cache)           -- fills slots [0, T) of a StaticCache
    step    (graph):   logits = step(token (B, 1), column (1,), positions (B, 1))
                         - K, V written at slot ``column`` by ``index_copy_`` (StaticCache.update_at)
                         - attention over the whole (B, Hkv, max_len, D) buffers, masked by the cache's
                           index tensor (-1 = nothing written: unwritten slots and padding)
                         - RoPE / learned positions from ``positions``, the mask's query column from ``column``
    then (eager):      cache.advance(1) (Python lengths); the caller's positions + 1

The write position and positions are device tensors, never Python ints, so dynamo traces the step once per
(model config, batch, max_len, dtype, device) and does not recompile per step (tested). A
:class:`CompiledDecoder` owns its StaticCache and its compiled function and is reused by every ``generate``
call with a matching shape (:func:`decoder_for` keeps them per model, without touching the model). ``max_len``
is rounded up to a power of two (at most the model's ``max_seq_len``), so calls with different prompt or
output lengths share a graph; attention then reads the empty slots too, masked.

After the first step of a generation (dynamo's guards checked), CPU steps call the compiled graph directly
(:mod:`mlcore.inference.direct_graph`), without dynamo's per-call entry.

On a CPU a batch-1 step computes its int8 linear layers, and its float32 / bfloat16 ones where
:func:`mlcore.inference.gemv_choice.single_row_gemv` picks them (everywhere but float32 on an Intel CPU with MKL,
where the graph calls MKL's sgemv on the stacked copies: 1.14x faster per token there, and bfloat16 on a CPU with
AMX, where inductor's C++ GEMM template runs AMX kernels over frozen weights: 1.6-1.9x), as row dot products that
inductor generates itself (:mod:`mlcore._row_dot`: 1.4-1.7x the weight-read rate of MKL, oneDNN or torch's int8 GEMV on
a small model's matrices on a 2-core EPYC; on a Xeon with AVX-512 and a 480 MB L3, where MKL and oneDNN are much
better, the tiled step still beat the frozen library graph per token of the 27M model: float32 1.14x, bfloat16
1.04x); see :data:`mlcore.inference.compile_options.ROW_DOT_OPTIONS` for the two compiler settings that graph needs. Its
float32 / bfloat16 ``nn.Linear`` layers read their weights as cache-line tiles (:func:`mlcore._row_dot.tiled_weight`,
1.04-1.24x faster per token on the 27M model), which each layer's ``LinearFusion`` keeps from the prefill of every
generation once a batch-1 decoder has started (one more copy of those weights, refilled in place when they are
edited; a weight edited *during* a generation is read from the next one on). A batched
CPU step keeps the library matmuls, and there (and under the GEMM template) the weights are *frozen* into the graph (inductor's
``freezing``: constants, linear weights prepacked for oneDNN / MKL; measured 1.2-1.6x faster per token than the
unfrozen graph). A frozen
graph would go stale if the weights changed, so each call compares the model's parameters and buffers with the
ones it was compiled from (object, address and version counter, as ``attention/fused_linear.py`` does) and
compiles again when they differ (tested). Models whose weights are inference tensors (no version counter)
are not frozen. The frozen copies cost about one more copy of the weights while the decoder lives.

The step mirrors ``Transformer.forward`` for one token with a cache (embedding, learned positions, the blocks,
final norm, head): the blocks and attention are the model's own modules, called with
:class:`~mlcore.attention.AttentionInputs` built from tensors instead of from the cache's Python length.
Not supported (refused with a message): training mode, dynamic NTK RoPE (its angles depend on a value read on
the host), the "flash" attention backend, and caches other than a StaticCache made here.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from mlcore._tensor_state import normal_tensors, tensor_state_key
from mlcore.attention import AttentionInputs
from mlcore.attention.fused_linear import LinearFusion
from mlcore.inference.compile_options import (
    COMPILE_MODES,
    CPU_OPTIONS,
    INDUCTOR_OPTIONS,
    ROW_DOT_OPTIONS,
    TEMPLATE_OPTIONS,
    bucket_length,
    check_compilable,
    compile_errors,
    grad_mode,
    recompile_limit_errors,
    without_guards,
)
from mlcore.inference.direct_graph import DirectCall, GraphCapture
from mlcore.inference.gemv_choice import single_row_gemv
from mlcore.inference.static_cache import StaticCache

__all__ = ["CompiledDecoder", "decoder_for", "check_compilable", "COMPILE_MODES"]

class _SlotWriter:
    """The cache a compiled step hands to the attention layers: ``update`` writes at the tensor ``slots``."""

    __slots__ = ("cache", "slots")

    def __init__(self, cache: StaticCache, slots: Tensor) -> None:
        self.cache, self.slots = cache, slots

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.cache.update_at(layer_idx, k, v, index, self.slots)


def _decode_step(model: nn.Module, cache: StaticCache, token: Tensor, column: Tensor, positions: Tensor) -> Tensor:
    """One decode step: token (B, 1) at cache column ``column`` (1,), positions (B, 1) -> logits (B, 1, V).

    ``Transformer.forward`` for T = 1 with a cache, with the column as a tensor (traced by torch.compile)."""
    B = token.shape[0]
    query_index = column.view(1, 1).expand(B, 1)  # the new token's column; it is a real token, never -1
    cos = sin = None
    if model.rope is not None:
        cos, sin = model.rope(positions)  # (B, 1, rotary_dim) float32
    inputs = AttentionInputs(positions=positions, index=query_index, query_index=query_index, cos=cos, sin=sin,
                             queries_are_tokens=True)
    writer = _SlotWriter(cache, column)
    x = model.embed(token)  # (B, 1, C)
    if model.pos_emb is not None:  # its rows read directly: the module's range check reads values on the host
        x = x + model.pos_emb.weight[positions]  # (positions < max_len <= max_seq_len by construction)
    for block in model.layers:
        x = block(x, inputs=inputs, cache=writer)
    return model.head_layout.run_layer(model.lm_head, model.norm(x), model.training)  # (B, 1, V)


def _tiled_everywhere(model: nn.Module) -> bool:
    """True when every ``nn.Linear`` of ``model`` is read through ``tiled_weight`` tiles in a traced batch-1 CPU
    step (the prefill just built them, ``LinearFusion.trace_tiles``) and no other layer computes row dots.

    Then the step compiles with inductor's default ``realize_opcount_threshold``: at 0 (``ROW_DOT_OPTIONS``)
    inductor would also realize a tile's product ``x_i * tiles[t, i, r]`` -- whose loop order is not the
    reduction's -- as a float32 buffer 2-4x the weight's size (measured 17x slower). A tile recomputes an
    inlined input (RMSNorm, SiLU(gate) * up) once per tile of R rows, not once per row, so nothing is lost.
    Measured per generated token of the 27M Llama, one thread, against row dots: bfloat16 1.15x, float32
    1.04x faster, the same tokens.

    Otherwise (a quantized layer, or a layer whose output count is no multiple of a tile) the step reads no tiles
    at all (``_set_trace_tiles(model, False)`` drops them before the trace): at threshold 0 a tiled layer would be
    that 17x slower kernel.
    """
    linears = sum(type(m) is nn.Linear for m in model.modules())
    tiled = sum(fusion.tiled_layers() for fusion in _fusions(model))
    others = _own_row_dots(model)
    return linears > 0 and tiled == linears and not others


def _own_row_dots(model: nn.Module) -> bool:
    """True when a layer of ``model`` traces row dots of its own (e.g. QuantizedLinear's, over int8 codes)."""
    return any(hasattr(m, "prepare_traced") for m in model.modules())


def _fusions(model: nn.Module) -> Iterator[LinearFusion]:
    """Every ``LinearFusion`` the model's modules hold (plain attributes, not submodules)."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, LinearFusion):
                yield value


def _set_row_dots(model: nn.Module, on: bool) -> None:
    """Switch every ``LinearFusion`` of ``model`` between row dots and the library GEMV in a traced batch-1 step."""
    for fusion in _fusions(model):
        fusion.set_row_dots(on)


def _set_trace_tiles(model: nn.Module, on: bool) -> None:
    """Switch every ``LinearFusion`` of ``model`` to keep tiles from its eager calls, or off (tiles dropped)."""
    for fusion in _fusions(model):
        fusion.set_trace_tiles(on)

class CompiledDecoder:
    """A StaticCache of ``batch`` rows x ``max_len`` columns and the compiled decode step that writes it.

    ``start()`` empties the cache (for a new prompt); an eager prefill then fills it through its ordinary
    ``update``; ``step(token, positions)`` decodes one token per row through the compiled function.
    Compilation happens on the first ``step`` (seconds to minutes on a CPU) and serves every later call.

    Args:
        mode: the ``torch.compile`` mode ("reduce-overhead" = CUDA graphs on CUDA).
        freeze: fold the weights into the graph as constants (default: on a CPU for batch > 1, and for a batch-1
            CPU step whose linears use inductor's GEMM template; other batch-1 CPU steps read them as inputs, see
            :data:`ROW_DOT_OPTIONS`); ``start()`` recompiles when the frozen weights changed since.
        dtype, device: of the cache (default: the model's parameters').

    ``gemv`` (attribute): the float linears' GEMV of a batch-1 CPU step, ``"row_dots"``, ``"library"`` or
    ``"template"``, fixed when the decoder is made (:func:`mlcore.inference.gemv_choice.single_row_gemv`; the
    template only with frozen weights and no int8 row-dot layers, else the row dots); ``"library"`` otherwise.
    """

    def __init__(self, model: nn.Module, *, batch: int, max_len: int, mode: str = "default",
                 freeze: bool | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        check_compilable(model)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if not isinstance(max_len, int) or isinstance(max_len, bool) or not 1 <= max_len <= model.config.max_seq_len:
            raise ValueError(f"max_len must be an int in [1, max_seq_len={model.config.max_seq_len}], got {max_len!r}")
        if mode not in COMPILE_MODES:
            raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"dtype must be None or a floating torch.dtype (the cache's), got {dtype!r}")
        p = next(model.parameters())
        if dtype is not None and dtype != p.dtype:  # the attention layers refuse k / v of another dtype than q
            raise ValueError(f"dtype={dtype} differs from the model's {p.dtype}: cast the model instead")
        if freeze is not None and not isinstance(freeze, bool):
            raise ValueError(f"freeze must be None, True or False, got {freeze!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"device must name a torch device, got {device!r}") from err
            # the step reads the model's weights: a cache elsewhere failed deep inside the first trace; "cuda"
            # names the model's "cuda:0" (kept as the model's, which the tokens' device is compared with)
            other_index = None not in (device.index, p.device.index) and device.index != p.device.index
            if device.type != p.device.type or other_index:
                raise ValueError(f"device={device} differs from the model's {p.device}: move the model instead")
        self.batch, self.max_len, self.mode = batch, max_len, mode
        self.dtype = p.dtype  # a dtype= argument was checked equal to it above
        self.device = p.device
        self._model = weakref.ref(model)  # the decoder is kept per model (decoder_for): no strong cycle
        # Normal tensors even when built under torch.inference_mode: the decoder is kept per model and reused,
        # and a later call outside inference mode writes these buffers in place (refused on inference tensors)
        with normal_tensors():
            self.cache = StaticCache.for_model(model, batch, max_len, dtype=self.dtype, device=self.device)
        self.cudagraphs = mode == "reduce-overhead" and self.device.type == "cuda"
        if self.cudagraphs:  # buffers written in place inside a CUDA graph must keep their addresses
            for t in (*self.cache.keys.values(), *self.cache.values.values(), self.cache.index):
                torch._dynamo.mark_static_address(t)
        tensors = [*model.parameters(), *model.buffers()]
        # inference tensors keep no version counter: a change to frozen weights could not be seen
        self.row_dots = self.device.type == "cpu" and batch == 1  # see ROW_DOT_OPTIONS
        # the float linears' GEMV of a batch-1 CPU step, chosen per machine (gemv_choice.py); batched: library
        self.gemv = single_row_gemv(self.dtype) if self.row_dots else "library"
        template = self.gemv == "template"  # inductor's GEMM template: over frozen weights only
        default_freeze = self.device.type == "cpu" and (not self.row_dots or template)
        self.freeze = (default_freeze if freeze is None else bool(freeze)) and not any(
            t.is_inference() for t in tensors)
        if template and (not self.freeze or _own_row_dots(model)):
            # unfrozen weights, or int8 row dots whose widened weights freezing would fold: row dots instead
            self.gemv, self.freeze = "row_dots", self.freeze and freeze is True
        # tiles: decided at the first trace (_tiled_everywhere); none where a library or template GEMV reads
        self.tiles: bool | None = None if self.row_dots and self.gemv == "row_dots" else False
        self._fn: Callable[..., Tensor] | None = None
        self._weights: tuple[int, ...] | None = None  # the weights' state when the frozen graph was made
        self._traced = False  # the current compiled function has run (was traced) once
        self._realize = False  # compile with ROW_DOT_OPTIONS (decided with the tiles, at the first trace)
        with normal_tensors():  # written in place by every step, whatever mode the caller is in
            self._column = torch.zeros(1, dtype=torch.long, device=self.device)
        self._guarded = False  # a step since start() ran with dynamo's guards checked
        self._capture: GraphCapture | None = None  # the backend that keeps the graph dynamo ran (not on CUDA graphs)
        self._direct: DirectCall | None = None  # the graph and its inputs for steps after the guarded one
        self._guarded_mode = grad_mode()  # (grad, inference) of that guarded step
        self.steps = 0  # compiled steps run (all calls)
        self.compiles = 0  # compiled functions made (more than one: frozen weights that changed)

    def _compiled(self) -> Callable[..., Tensor]:
        """The compiled step; with frozen weights, a new one when the model's parameters or buffers changed."""
        weights = None
        if self.gemv == "template" and _own_row_dots(self.model):  # quantized since it was made: as in __init__
            self.gemv, self.freeze, self.tiles, self._fn = "row_dots", False, None, None
        if self.freeze:
            model = self.model
            weights = tensor_state_key([*model.parameters(), *model.buffers()])
        if self._fn is None or weights != self._weights:
            self._fn, self._weights, self._traced = self._make(), weights, False
            self.compiles += 1
        return self._fn

    def _make(self) -> Callable[..., Tensor]:
        """``torch.compile`` of a private copy of :func:`_decode_step` (compiled on its first call).

        dynamic=False: every shape is static by design (never turned symbolic after a second shape is seen).
        Dynamo keeps compiled graphs and their guards on the function's code object; a copy of the code per
        decoder gives each decoder its own entry: a step checks one set of guards, a new copy really compiles
        anew (frozen weights that changed), and many decoders never reach dynamo's recompile limit (past
        which it would run the step eagerly)."""
        step = types.FunctionType(_decode_step.__code__.replace(), _decode_step.__globals__, "_decode_step")
        if self.cudagraphs:  # the CUDA graph is replayed with one launch already: dynamo's entry stays
            self._capture = None
            return torch.compile(step, mode=self.mode, fullgraph=True, dynamic=False)
        self._capture = GraphCapture(self.mode)  # see mlcore/inference/direct_graph.py
        return torch.compile(step, backend=self._capture, fullgraph=True, dynamic=False)

    def _call(self, *args: object, guarded: bool = False) -> Tensor:
        """Run the compiled step; its first call traces and compiles it under :data:`INDUCTOR_OPTIONS`, with
        inductor's freezing switched on when ``freeze`` (inductor reads these while compiling).

        ``guarded``: a call with every guard checked, where dynamo may compile another graph (a hook added since
        the first trace): it runs under the same compiler settings, which inductor reads only while compiling.
        Unguarded steps (one per token) skip the settings' patch: they cannot compile."""
        fn = self._fn or self._compiled()
        if self._traced and not guarded:
            return fn(*args)
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config

        model = self.model
        if self.row_dots:
            _set_row_dots(model, self.gemv == "row_dots")  # read while tracing (LinearFusion.__call__)
            if not self._traced:  # tiles for every linear layer, or none (see _tiled_everywhere)
                self.tiles = self.gemv == "row_dots" and _tiled_everywhere(model)
                if not self.tiles:
                    _set_trace_tiles(model, False)
                # untiled row dots (float ones, or a quantized layer's) need inputs realized once
                self._realize = not self.tiles and (self.gemv == "row_dots" or _own_row_dots(model))
        row_dot_options = ROW_DOT_OPTIONS if self._realize else {}
        template_options = TEMPLATE_OPTIONS if self.gemv == "template" else {}
        wanted = {**INDUCTOR_OPTIONS, **(CPU_OPTIONS if self.device.type == "cpu" else {}), **row_dot_options,
                  **template_options}
        options = {k: v for k, v in wanted.items() if hasattr(inductor_config, k)}  # older torch lacks some
        # dynamo skips guards on module hooks by default: a hook added after the trace would be ignored by the
        # compiled step, silently unlike eager decoding; with hook guards on, the guarded call recompiles
        hooks = {"skip_nnmodule_hook_guards": False} if hasattr(dynamo_config, "skip_nnmodule_hook_guards") else {}
        with inductor_config.patch(freezing=self.freeze, **options), dynamo_config.patch(**hooks):
            out = fn(*args)
        self._traced = True
        return out

    def _guarded_call(self, token: Tensor, positions: Tensor) -> Tensor:
        """The step through dynamo with every guard; a new compiled function when this one can take no more graphs.

        Each change dynamo's guards see (a hook or LoRA wrapper added, a module swapped, another grad mode) keeps
        one more graph on the function's code; past ``torch._dynamo.config.recompile_limit`` (8) a fullgraph
        function refuses to run at all, and every later call of this decoder failed. A new code copy (see
        :meth:`_make`) compiles for the model as it is now; the refused call ran nothing, so the cache is intact."""
        try:
            return self._call(self.model, self.cache, token, self._column, positions, guarded=True)
        except recompile_limit_errors():
            self._fn, self._traced = self._make(), False
            self.compiles += 1
            return self._call(self.model, self.cache, token, self._column, positions, guarded=True)

    def _plan(self, token: Tensor, positions: Tensor) -> DirectCall | None:
        """After a guarded step: the graph it ran with its inputs, for direct calls until the next start()."""
        if self._capture is None:
            return None
        model = self.model
        persistent = [*model.parameters(), *model.buffers(), *self.cache.keys.values(), *self.cache.values.values(),
                      self._column]
        if self.cache.index is not None:
            persistent.append(self.cache.index)
        for fusion in _fusions(model):  # stacked copies (q | k | v, gate | up) and tiles a traced layer reads
            persistent += fusion.tensors()
        return self._capture.plan(token, positions, persistent)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise ValueError("this CompiledDecoder's model no longer exists")
        return model

    def matches(self, model: nn.Module, batch: int, needed: int, mode: str) -> bool:
        """True when this decoder can serve ``needed`` columns of ``batch`` rows of ``model`` in ``mode``."""
        p = next(model.parameters())
        return (self._model() is model and self.batch == batch and self.max_len >= needed and self.mode == mode
                and self.dtype == p.dtype and self.device == p.device)

    def start(self) -> StaticCache:
        """Empty the cache for a new prompt and return it (to prefill eagerly); with frozen weights, check
        that they are still the model's (else the next step compiles again)."""
        for module in self.model.modules():  # e.g. QuantizedLinear's kernel-ready scales, before any trace
            prepare = getattr(module, "prepare_traced", None)
            if prepare is not None:
                prepare()
        self._compiled()  # first: it may leave the template for row dots (a model quantized since), which tile
        if self.tiles is not False:  # the prefill keeps tiled weights for the step (see _tiled_everywhere)
            _set_trace_tiles(self.model, True)
        self.cache.reset()
        self._guarded = False
        self._direct = None
        return self.cache

    def step(self, token: Tensor, positions: Tensor, *, validate: bool = True) -> Tensor:
        """Decode token (B, 1) at positions (B, 1), written at the cache's next column; return logits (B, 1, V).

        ``validate`` also checks the values (token ids in the vocabulary, positions in the model's range: the
        compiled kernels index without bounds checks), which waits on the device; ``generate``, whose tokens and
        positions are in range by construction, steps with it off."""
        if not isinstance(token, Tensor) or not isinstance(positions, Tensor):
            raise ValueError(f"token and positions must be int64 ({self.batch}, 1) tensors, got "
                             f"{type(token).__name__} and {type(positions).__name__}")
        if token.shape != (self.batch, 1) or positions.shape != (self.batch, 1):
            raise ValueError(f"token and positions must be ({self.batch}, 1), got {tuple(token.shape)} and "
                             f"{tuple(positions.shape)}")
        if token.dtype != torch.long or positions.dtype != torch.long or token.device != self.device \
                or positions.device != self.device:
            raise ValueError(f"token and positions must be int64 tensors on {self.device}, got {token.dtype} on "
                             f"{token.device} and {positions.dtype} on {positions.device}")
        length = self.cache.get_seq_length()
        if length >= self.max_len:
            raise ValueError(f"CompiledDecoder cache is full (max_len={self.max_len})")
        if validate:
            config = self.model.config
            if int(token.min()) < 0 or int(token.max()) >= config.vocab_size:
                raise ValueError(f"token must hold ids in [0, vocab_size={config.vocab_size}), got "
                                 f"[{int(token.min())}, {int(token.max())}]")
            if int(positions.min()) < 0 or int(positions.max()) >= config.max_seq_len:
                raise ValueError(f"positions must lie in [0, max_seq_len={config.max_seq_len}), got "
                                 f"[{int(positions.min())}, {int(positions.max())}]")
        # The graph was compiled for contiguous (B, 1) inputs: a strided view (a column sliced from a (B, T) batch)
        # would be read at the traced strides by the direct calls, which skip dynamo's stride guards -- the
        # wrong rows' ids, silently. A contiguous tensor passes through as itself.
        token, positions = token.contiguous(), positions.contiguous()
        self._column.fill_(length)  # a write into the same tensor: the graph's inputs keep their identity
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        # After the first step since start() (every guard checked), later steps under the same grad mode skip
        # the guards (compile_options.GUARDS_ONCE) or, better, dynamo altogether (direct_graph.py); another grad mode is
        # another graph: those steps go through dynamo with their guards.
        same_mode = self._guarded and grad_mode() == self._guarded_mode
        try:
            if same_mode and self._direct is not None:
                logits = self._direct.call(token, positions)
            elif same_mode:
                with without_guards():
                    logits = self._call(self.model, self.cache, token, self._column, positions)
            else:
                logits = self._guarded_call(token, positions)
                if not self._guarded:
                    self._guarded, self._guarded_mode = True, grad_mode()
                    self._direct = self._plan(token, positions)
        except Exception as exc:
            if isinstance(exc, compile_errors()):  # the step could not be traced: say what to do instead
                raise RuntimeError(f"torch.compile could not compile this model's decode step "
                                   f"({type(exc).__name__}); decode with compile=False") from exc
            raise
        self.cache.advance(1)
        self.steps += 1
        return logits.clone() if self.cudagraphs else logits  # a CUDA graph's output is overwritten next replay


_DECODERS: weakref.WeakKeyDictionary[nn.Module, list[CompiledDecoder]] = weakref.WeakKeyDictionary()


def decoder_for(model: nn.Module, *, batch: int, needed: int, mode: str) -> CompiledDecoder:
    """The :class:`CompiledDecoder` of ``model`` for ``batch`` rows and at least ``needed`` columns in ``mode``:
    an existing one when one fits (the smallest), else a new one of :func:`bucket_length` columns, kept for
    later calls (per model, dropped with it)."""
    check_compilable(model)
    if needed > model.config.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens - 1 = {needed} cached columns exceed the model's max_seq_len="
                         f"{model.config.max_seq_len}")
    p = next(model.parameters())
    # decoders made before the model moved to another dtype or device can never serve it again: free them
    held = [d for d in _DECODERS.get(model, []) if d.dtype == p.dtype and d.device == p.device]
    _DECODERS[model] = held
    fits = [d for d in held if d.matches(model, batch, needed, mode)]
    if fits:
        return min(fits, key=lambda d: d.max_len)
    decoder = CompiledDecoder(model, batch=batch, max_len=bucket_length(needed, model.config.max_seq_len), mode=mode)
    held.append(decoder)
    return decoder
