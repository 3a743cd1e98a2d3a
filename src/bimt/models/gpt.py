"""BioGPT: a decoder-only language model whose neurons have positions (GPT-2's layout).

The network is nanoGPT's: token and learned position embeddings, ``n_layers`` pre-LayerNorm
blocks (causal multi-head attention, then a 4x GELU MLP, each added to the residual stream), a
final LayerNorm, and an unembedding tied to the token embedding (``tie=False``: a separate one).
What BIMT adds is one :class:`~bimt.PermutationSpec`, so the swap engine moves its neurons
without changing the logits:

``resid`` (``d_model``)
    the residual stream, one group for every axis that reads or writes it: the columns of the
    token and position embeddings (and of the unembedding), every LayerNorm gain and bias, the
    input axis of every ``attn.qkv`` and ``mlp.fc1``, the output axis (and bias) of every
    ``attn.proj`` and ``mlp.fc2``. Residual additions and LayerNorm statistics are blind to the
    order of the features, so permuting all of these at once keeps the function.
``attn{b}`` (``d_model`` slots, ``heads = n_heads``)
    the attention neurons of block ``b``: ``qkv`` rows hold three folds (``q_j, k_j, v_j`` share
    slot ``j``), ``proj`` columns the ``v`` neurons. A neuron stays inside its head (scores
    are sums over one head's neurons); whole heads trade places.
``mlp{b}`` (``mlp_ratio * d_model``)
    the MLP neurons of block ``b``: ``fc1`` rows and bias, ``fc2`` columns.

Charges: every linear weight by ``|w| * length``, every bias by ``|b| * y*``, the token and
position embeddings (and an untied unembedding) as embeddings, ``|E| * y*``: their vocabulary
and position axes belong to no group, so no length is defined for them. LayerNorm parameters
are permuted, not charged (as in :class:`bimt.BioTransformer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..core.checks import positive_int
from ..core.settings import CostSettings
from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec
from .drawing import register_view
from .transformer import CausalSelfAttention, transformer_drawing
from .wiring import Wiring, WiredModule

__all__ = ["BioGPT", "GPTBlock"]


class GPTBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` (no MLP when ``d_hidden == 0``)."""

    def __init__(self, d_model: int, n_heads: int, d_hidden: int, layer_norm: bool, bias: bool):
        super().__init__()
        norm = (lambda: nn.LayerNorm(d_model, bias=bias)) if layer_norm else nn.Identity
        self.ln1 = norm()
        self.attn = CausalSelfAttention(d_model, n_heads, bias)
        self.ln2 = norm() if d_hidden else None
        self.mlp = None
        if d_hidden:
            self.mlp = nn.Sequential()
            self.mlp.add_module("fc1", nn.Linear(d_model, d_hidden, bias=bias))
            self.mlp.add_module("act", nn.GELU())
            self.mlp.add_module("fc2", nn.Linear(d_hidden, d_model, bias=bias))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attend(x)
        return x if self.mlp is None else x + self.mlp(self.ln2(x))


class BioGPT(WiredModule):
    """A GPT-2-style language model whose neurons have positions.

    Parameters
    ----------
    vocab_size : number of tokens; input ``(batch, seq)`` (or ``(seq,)``) integer token ids,
        output logits ``(batch, seq, vocab_size)``.
    n_positions : longest sequence (learned position embedding).
    d_model, n_layers, n_heads : residual width, number of blocks, heads per attention layer
        (must divide ``d_model``). GPT-2 small is ``BioGPT(50257, 1024, 768, 12, 12)``.
    mlp_ratio : MLP width as a multiple of ``d_model`` (4 as GPT-2; 0: attention only).
    tie : the unembedding is the token embedding (default, as GPT-2); ``False`` gives a
        separate ``lm_head`` (charged as an embedding too).
    layer_norm : pre-LayerNorm blocks and a final LayerNorm (default); ``False`` makes them
        identities (a model whose weights are set by hand, say).
    bias : linear layers (and LayerNorms) with biases.
    layout : ``line`` (default) for every group, or a mapping from group name (``resid``,
        ``attn0``, ``mlp0``, ...) to a layout; unnamed groups use lines.
    settings, **cost_settings : the connection cost's settings (:class:`bimt.CostSettings`, its
        defaults when omitted), with any of its fields given as keywords on top (``A=2.0``).

    Initialisation follows GPT-2: normal(0, 0.02) weights and embeddings, zero biases, and the
    two projections that write the residual stream scaled by ``1 / sqrt(2 n_layers)``.
    """

    def __init__(
        self,
        vocab_size: int,
        n_positions: int = 128,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        mlp_ratio: int = 4,
        tie: bool = True,
        layer_norm: bool = True,
        bias: bool = True,
        layout: str | Mapping = "line",
        settings: CostSettings | None = None,
        **cost_settings,
    ):
        super().__init__()
        for what, v in (("vocab_size", vocab_size), ("n_positions", n_positions),
                        ("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
            positive_int(v, what)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int) or mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be an integer >= 0 (0: no MLP), got {mlp_ratio!r}")
        if d_model % n_heads:
            raise ValueError(
                f"n_heads={n_heads} must divide d_model={d_model} (each head gets "
                f"d_model / n_heads neurons); try d_model={n_heads * max(1, d_model // n_heads)}"
            )
        if settings is not None and not isinstance(settings, CostSettings):
            raise TypeError(f"settings must be a bimt.CostSettings, got {type(settings).__name__}")
        settings = CostSettings.of(settings, **cost_settings)
        self.vocab_size, self.n_positions, self.d_model = vocab_size, n_positions, d_model
        self.n_layers, self.n_heads, self.mlp_ratio = n_layers, n_heads, mlp_ratio
        self.tie, self.layer_norm = bool(tie), bool(layer_norm)

        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(n_positions, d_model)
        self.blocks = nn.ModuleList(
            GPTBlock(d_model, n_heads, mlp_ratio * d_model, layer_norm, bias)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model, bias=bias) if layer_norm else nn.Identity()
        self.lm_head = None if tie else nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights()
        self.spec = self._build_spec(layout, bias)
        self.bimt = Wiring(self, self.spec, settings, view="gpt",
                           probes={"residual_stream": "residual_stream",
                                   "attention_patterns": "attention_patterns"})

    @torch.no_grad()
    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 2:
                std = 0.02
                if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                    std /= math.sqrt(2 * self.n_layers)
                p.normal_(0.0, std)

    # -- the permutation spec ----------------------------------------------------------------
    def _build_spec(self, layout, bias: bool) -> PermutationSpec:
        sizes = {"resid": self.d_model}
        for b in range(self.n_layers):
            sizes[f"attn{b}"] = self.d_model
            if self.mlp_ratio:
                sizes[f"mlp{b}"] = self.mlp_ratio * self.d_model
        if isinstance(layout, Mapping):
            unknown = set(layout) - set(sizes)
            if unknown:
                raise ValueError(
                    f"layout names unknown groups {sorted(unknown)}; groups: {', '.join(sizes)}"
                )
            kinds = {g: layout.get(g, "line") for g in sizes}
        else:
            kinds = {g: layout for g in sizes}
        groups = [Group(g, make_layout(kinds[g], n), heads=self.n_heads if g.startswith("attn") else 1)
                  for g, n in sizes.items()]

        axes: dict[str, tuple] = {}
        charges: dict[str, str] = {}

        def linear(name, out_g, in_g):
            axes[f"{name}.weight"], charges[f"{name}.weight"] = (out_g, in_g), "weight"
            if bias:
                axes[f"{name}.bias"], charges[f"{name}.bias"] = (out_g,), "bias"

        def norm(name):
            if self.layer_norm:
                axes[f"{name}.weight"] = ("resid",)
                if bias:
                    axes[f"{name}.bias"] = ("resid",)

        for name in ("wte.weight", "wpe.weight") + (() if self.tie else ("lm_head.weight",)):
            axes[name], charges[name] = (None, "resid"), "embedding"
        for b in range(self.n_layers):
            pre = f"blocks.{b}"
            norm(f"{pre}.ln1")
            linear(f"{pre}.attn.qkv", f"attn{b}", "resid")  # axis 0: three folds q, k, v
            linear(f"{pre}.attn.proj", "resid", f"attn{b}")  # axis 1: the v neurons
            if self.mlp_ratio:
                norm(f"{pre}.ln2")
                linear(f"{pre}.mlp.fc1", f"mlp{b}", "resid")
                linear(f"{pre}.mlp.fc2", "resid", f"mlp{b}")
        norm("ln_f")
        return PermutationSpec(groups, axes, charges)

    # -- the function ------------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, bool]:
        single = tokens.dim() == 1
        if single:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int16,
                                                     torch.int8, torch.uint8):
            raise ValueError(
                f"expected integer token ids of shape (batch, seq) or (seq,), got "
                f"{tokens.dtype} of shape {tuple(tokens.shape)}"
            )
        T = tokens.shape[1]
        if T > self.n_positions:
            raise ValueError(f"sequence of length {T} exceeds n_positions={self.n_positions}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got values from "
                f"{int(tokens.min())} to {int(tokens.max())}"
            )
        positions = torch.arange(T, device=tokens.device)
        return self.wte(tokens.long()) + self.wpe(positions), single

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from a residual stream (after the final LayerNorm)."""
        weight = self.wte.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.ln_f(h), weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, single = self._embed(tokens)
        for block in self.blocks:
            h = block(h)
        logits = self.unembed(h)
        return logits[0] if single else logits

    # -- probes for analysis -----------------------------------------------------------------
    def residual_stream(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream in slot order: after the embeddings, then after every attention
        and every MLP sublayer (``(batch, seq, d_model)`` each; with MLPs, index ``2b + 1``
        follows block ``b``'s attention and ``2b + 2`` its MLP; attention only: ``b + 1``)."""
        h, single = self._embed(tokens)
        stream = [h]
        for block in self.blocks:
            h = block.attend(h)
            stream.append(h)
            if block.mlp is not None:
                h = h + block.mlp(block.ln2(h))
                stream.append(h)
        return [s[0] for s in stream] if single else stream

    def attention_patterns(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every layer, ``(batch, n_heads, seq, seq)`` each (query
        by key), heads in slot order."""
        h, single = self._embed(tokens)
        out = []
        for block in self.blocks:
            out.append(block.attn.scores(block.ln1(h))[0])
            h = block(h)
        return [a[0] for a in out] if single else out

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, n_positions={self.n_positions}, "
            f"d_model={self.d_model}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"mlp_ratio={self.mlp_ratio}, tie={self.tie}, layer_norm={self.layer_norm}"
        )


register_view("gpt", transformer_drawing)  # the transformer's rows: embeddings, blocks, stream
