"""BioTransformer: a small decoder-only transformer whose neurons have positions (App. F).

BIMT carries over to transformers by charging every *linear map* (embedding, the joint
``[W_Q; W_K; W_V]`` matrix, the attention output projection, both MLP layers, the unembedding)
like an MLP layer, and by swapping only what leaves the function unchanged. The whole model is
one :class:`~bimt.PermutationSpec`; the swap engine knows nothing about transformers.

Groups (all on lines by default, the paper's 2D embedding):

``input`` (``d_in``)
    the input features; ``embed.weight`` axis 1 and the ``input_order`` buffer.
``resid`` (``d_model``)
    the residual stream, **one group tied across every tensor axis that reads or writes it**
    (App. F, "residual connections"): ``embed.weight`` axis 0 and ``embed.bias``,
    ``pos_embed`` axis 1 (if any), every ``blocks.b.attn.qkv.weight`` axis 1, every
    ``blocks.b.attn.proj.weight`` axis 0 and ``.bias``, every ``blocks.b.mlp.fc1.weight``
    axis 1, every ``blocks.b.mlp.fc2.weight`` axis 0 and ``.bias``, ``unembed.weight`` axis 1,
    and the LayerNorm gains and biases (``blocks.b.ln1``, ``blocks.b.ln2``, ``ln_f``) when
    ``layer_norm=True``. Permuting one of these alone changes the function; permuting all of
    them at once does not, because the residual additions and the LayerNorm statistics (mean
    and variance over features) are blind to the order of the features.
``attn{b}`` (``d_model`` slots, ``heads = n_heads``)
    the attention neurons of block ``b``. ``blocks.b.attn.qkv.weight`` axis 0 and
    ``blocks.b.attn.qkv.bias`` hold three folds (Q, K, V): neuron ``f * d_model + j`` sits at
    slot ``j``, so ``q_j``, ``k_j`` and ``v_j`` share a position and always move together. The
    score ``q . k`` is a sum over the neurons of a head, so it is unchanged when ``q`` and ``k``
    are permuted alike *within* the head; ``v_j`` moves with column ``j`` of
    ``blocks.b.attn.proj.weight`` (axis 1, the only fold). Neurons never leave their head;
    whole heads may trade places (the spec's ``heads``).
``mlp{b}`` (``mlp_ratio * d_model``)
    the MLP hidden neurons of block ``b``: ``blocks.b.mlp.fc1.weight`` axis 0 and ``.bias``,
    ``blocks.b.mlp.fc2.weight`` axis 1.
``output`` (``d_out``)
    the output features: ``unembed.weight`` axis 0, ``unembed.bias`` and ``output_order``.

Charges: every linear weight as ``weight`` (``|w| * (A |dx| + y*)``), every linear bias as
``bias``, the positional embedding (if any) as ``embedding``. LayerNorm gains and biases are
permuted with the residual stream but not charged: they are not linear maps in the paper's
sense, and pulling the gain to zero would fight the normalisation (the paper simply removes
LayerNorm, which is our default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..core.checks import positive_int
from ..core.cost import CostSettings
from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec
from .mlp import make_activation
from .drawing import Drawing, name_transformer_rows, register_view, spec_drawing
from .wiring import Wiring, WiredModule, restore_order

__all__ = ["BioTransformer", "CausalSelfAttention", "TransformerBlock", "transformer_drawing"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one joint QKV map (three folds of one group)."""

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        self.d_model, self.n_heads = d_model, n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention probabilities ``(batch, heads, seq, seq)`` and values ``(b, h, seq, d_h)``."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.d_model, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return att, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        att, v = self.scores(x)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.d_model)
        return self.proj(y)


class TransformerBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; the LayerNorms are identities by default."""

    def __init__(self, d_model, n_heads, d_hidden, activation, layer_norm, bias):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.attn = CausalSelfAttention(d_model, n_heads, bias)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(d_model, d_hidden, bias=bias))
        self.mlp.add_module("act", make_activation(activation))
        self.mlp.add_module("fc2", nn.Linear(d_hidden, d_model, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class BioTransformer(WiredModule):
    """A causal transformer whose neurons have positions (the paper's Sec. 3.4 and App. F).

    Parameters
    ----------
    d_in, d_out : features per token in and out; input ``(batch, seq, d_in)`` (or
        ``(seq, d_in)``), output of the same leading shape with ``d_out`` features.
    d_model, n_blocks, n_heads, mlp_ratio : width of the residual stream, number of blocks
        (attention + MLP each), heads per attention layer (must divide ``d_model``), and MLP
        hidden width as a multiple of ``d_model``. Defaults: the paper's in-context model
        (embedding 32, 2 blocks, 1 head, MLP 4x).
    activation : MLP nonlinearity, ``gelu`` by default (as the paper).
    layer_norm : ``False`` (default, App. F: LayerNorm removed). ``True`` adds pre-LN before
        each attention and MLP and before the unembedding; the LayerNorm gains and biases join
        the residual permutation (they are permuted, not charged).
    n_positions : if given, a learned positional embedding ``pos_embed`` of that many
        positions is added after the input embedding, charged as an embedding. Off by default
        (the paper's model has none).
    bias : linear layers with biases.
    layout : ``line`` (default) for every group, or a mapping from group name (``input``,
        ``resid``, ``attn0``, ``mlp0``, ..., ``output``) to a layout; unnamed groups use lines.
    freeze_inputs, freeze_outputs : those neurons never move.
    settings, **cost_settings : the connection cost's settings (:class:`bimt.CostSettings`, its
        defaults when omitted), with any of its fields given as keywords on top (``A=2.0``).
    input_labels, output_labels : optional names of the input and output features (used by
        the plots).

    Inputs and outputs keep their order whatever the swaps: ``input_order`` and
    ``output_order`` record which feature each slot holds, and ``forward`` applies them.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        d_model: int = 32,
        n_blocks: int = 2,
        n_heads: int = 1,
        mlp_ratio: int = 4,
        activation="gelu",
        layer_norm: bool = False,
        n_positions: int | None = None,
        bias: bool = True,
        layout: str | Mapping = "line",
        freeze_inputs: bool = False,
        freeze_outputs: bool = False,
        settings: CostSettings | None = None,
        input_labels: Sequence[str] | None = None,
        output_labels: Sequence[str] | None = None,
        **cost_settings,
    ):
        super().__init__()
        for what, v in (("d_in", d_in), ("d_out", d_out), ("d_model", d_model),
                        ("n_blocks", n_blocks), ("n_heads", n_heads), ("mlp_ratio", mlp_ratio)):
            positive_int(v, what)
        if d_model % n_heads:
            raise ValueError(
                f"n_heads={n_heads} must divide d_model={d_model} (each head gets "
                f"d_model / n_heads neurons); try d_model={n_heads * max(1, d_model // n_heads)}"
            )
        positive_int(n_positions, "n_positions", allow_none=True)
        self.d_in, self.d_out, self.d_model = d_in, d_out, d_model
        self.n_blocks, self.n_heads, self.mlp_ratio = n_blocks, n_heads, mlp_ratio
        self.layer_norm, self.n_positions = bool(layer_norm), n_positions
        d_hidden = mlp_ratio * d_model

        self.embed = nn.Linear(d_in, d_model, bias=bias)
        self.pos_embed = (
            nn.Parameter(0.02 * torch.randn(n_positions, d_model)) if n_positions else None
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_hidden, activation, layer_norm, bias)
            for _ in range(n_blocks)
        )
        self.ln_f = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, d_out, bias=bias)
        self.register_buffer("input_order", torch.arange(d_in))
        self.register_buffer("output_order", torch.arange(d_out))
        for what, labels, n in (("input_labels", input_labels, d_in),
                                ("output_labels", output_labels, d_out)):
            if labels is not None and len(labels) != n:
                raise ValueError(f"{what} has {len(labels)} names for {n} features")

        self.spec = self._build_spec(layout, bias, freeze_inputs, freeze_outputs)
        settings = CostSettings.of(settings, **cost_settings)
        self.bimt = Wiring(self, self.spec, settings, view="transformer",
                           input_labels=input_labels, output_labels=output_labels,
                           probes={"residual_stream": "residual_stream",
                                   "attention_patterns": "attention_patterns"})

    # -- the permutation spec ----------------------------------------------------------------
    def _build_spec(self, layout, bias, freeze_inputs, freeze_outputs) -> PermutationSpec:
        sizes = {"input": self.d_in, "resid": self.d_model}
        for b in range(self.n_blocks):
            sizes[f"attn{b}"] = self.d_model
            sizes[f"mlp{b}"] = self.mlp_ratio * self.d_model
        sizes["output"] = self.d_out
        if isinstance(layout, Mapping):
            unknown = set(layout) - set(sizes)
            if unknown:
                raise ValueError(
                    f"layout names unknown groups {sorted(unknown)}; groups: {', '.join(sizes)}"
                )
            kinds = {g: layout.get(g, "line") for g in sizes}
        else:
            kinds = {g: layout for g in sizes}
        groups = {}
        for g, n in sizes.items():
            frozen = (g == "input" and freeze_inputs) or (g == "output" and freeze_outputs)
            heads = self.n_heads if g.startswith("attn") else 1
            groups[g] = Group(g, make_layout(kinds[g], n), heads=heads, frozen=frozen)

        axes: dict[str, tuple] = {}
        charges: dict[str, str] = {}

        def linear(name, out_g, in_g):
            axes[f"{name}.weight"] = (out_g, in_g)
            charges[f"{name}.weight"] = "weight"
            if bias:
                axes[f"{name}.bias"] = (out_g,)
                charges[f"{name}.bias"] = "bias"

        def layer_norm(name):
            if self.layer_norm:
                axes[f"{name}.weight"] = ("resid",)
                axes[f"{name}.bias"] = ("resid",)

        axes["input_order"] = ("input",)
        linear("embed", "resid", "input")
        if self.pos_embed is not None:
            axes["pos_embed"] = (None, "resid")
            charges["pos_embed"] = "embedding"
        for b in range(self.n_blocks):
            pre = f"blocks.{b}"
            layer_norm(f"{pre}.ln1")
            linear(f"{pre}.attn.qkv", f"attn{b}", "resid")  # axis 0: 3 folds Q, K, V
            linear(f"{pre}.attn.proj", "resid", f"attn{b}")  # axis 1: the V neurons
            layer_norm(f"{pre}.ln2")
            linear(f"{pre}.mlp.fc1", f"mlp{b}", "resid")
            linear(f"{pre}.mlp.fc2", "resid", f"mlp{b}")
        layer_norm("ln_f")
        linear("unembed", "output", "resid")
        axes["output_order"] = ("output",)
        free = [f"blocks.{b}.mlp.act.{n}" for b, blk in enumerate(self.blocks)
                for n, _ in [*blk.mlp.act.named_parameters(), *blk.mlp.act.named_buffers()]]
        return PermutationSpec(groups, axes, charges, free=free)

    # -- the function ------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"expected inputs with {self.d_in} features in the last axis, got shape "
                f"{tuple(x.shape)} (use (batch, seq, d_in) or (seq, d_in))"
            )
        h = self.embed(x.index_select(-1, self.input_order))
        if self.pos_embed is not None:
            T = h.shape[-2]
            if T > self.n_positions:
                raise ValueError(
                    f"sequence of length {T} exceeds n_positions={self.n_positions}"
                )
            h = h + self.pos_embed[:T]
        return h

    @staticmethod
    def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if x.dim() == 2:
            return x.unsqueeze(0), True
        if x.dim() != 3:
            raise ValueError(
                f"expected input of shape (batch, seq, d_in) or (seq, d_in), got {tuple(x.shape)}"
            )
        return x, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, single = self._batched(x)
        h = self._embed(x)
        for block in self.blocks:
            h = block(h)
        y = restore_order(self.unembed(self.ln_f(h)), self.output_order)
        return y[0] if single else y

    def residual_stream(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream, in slot order: after the embedding, then after every attention
        and every MLP sublayer (``1 + 2 * n_blocks`` tensors of shape ``(batch, seq, d_model)``;
        index ``2b + 1`` follows block ``b``'s attention, ``2b + 2`` its MLP)."""
        x, single = self._batched(x)
        h = self._embed(x)
        stream = [h]
        for block in self.blocks:
            h = h + block.attn(block.ln1(h))
            stream.append(h)
            h = h + block.mlp(block.ln2(h))
            stream.append(h)
        return [s[0] for s in stream] if single else stream

    def attention_patterns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, ``(batch, n_heads, seq, seq)`` each, heads in
        slot order."""
        x, single = self._batched(x)
        stream = self.residual_stream(x)
        out = [blk.attn.scores(blk.ln1(stream[2 * b]))[0] for b, blk in enumerate(self.blocks)]
        return [a[0] for a in out] if single else out

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, d_out={self.d_out}, d_model={self.d_model}, "
            f"n_blocks={self.n_blocks}, n_heads={self.n_heads}, mlp_ratio={self.mlp_ratio}, "
            f"layer_norm={self.layer_norm}"
        )


def transformer_drawing(wiring) -> Drawing:
    """The paper's Fig. 7 rows for a spec with groups ``resid``, ``attn{b}`` (a joint qkv map,
    ``blocks.{b}.attn.qkv``) and ``mlp{b}``: the inputs, the stream after the embedding
    ("Embed"), then per block its attention neurons (q, k and v share a slot: three offset rows,
    boxed head by head), the stream after attention, the MLP neurons, the stream after the MLP
    ("Res1", "Res2", ...), the outputs. The output projection reads the v neurons."""
    n_blocks = sum(g.startswith("attn") for g in wiring.spec.groups)
    drawing = spec_drawing(
        wiring, fold_hints={f"blocks.{b}.attn.proj.weight": (0, 2) for b in range(n_blocks)},
        fold_names={f"attn{b}": ["q", "k", "v"] for b in range(n_blocks)})
    return name_transformer_rows(drawing)


register_view("transformer", transformer_drawing)
