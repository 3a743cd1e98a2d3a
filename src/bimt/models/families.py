"""Spec builders by model family: ``bimt.attach(model)`` for the networks researchers already use.

:func:`attach` derives the spec of an ``nn.Sequential`` itself; for any other module it looks up
a *builder* by the module's class (and its base classes), registered either with the class or
with its qualified name (``"transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"``), so that
registering needs neither ``transformers`` nor ``torchvision`` imported. A builder is
``builder(module, layout="line") -> DerivedSpec`` (or a bare :class:`PermutationSpec`);
:func:`register_spec_builder` adds one. Every model is built from a config with random weights;
nothing here downloads anything, and importing this module imports neither library.

Why each family's permutations keep the function:

**GPT-2** (``GPT2LMHeadModel``, ``GPT2Model``; Hugging Face ``transformers``).
``resid`` is the residual stream, one group for every axis that reads or writes it: the token
and position embeddings ``wte``/``wpe`` (axis 1), every ``c_attn``/``c_fc`` input, every
``c_proj`` output and bias, and the gains and biases of ``ln_1``, ``ln_2``, ``ln_f``. Residual
additions and LayerNorm's mean and variance over the features do not see the features' order,
so permuting all of them at once changes nothing. ``attn{b}`` (``n_embd`` slots, ``n_head``
heads): ``c_attn``'s output is three folds ``q | k | v`` (neuron ``f * n_embd + j`` at slot
``j``), so ``q_j``, ``k_j``, ``v_j`` move together, and column ``j`` of the attention ``c_proj``
with them; a head's score is a sum over its own dimensions, so its dimensions may be permuted
inside it, and whole heads may trade places. ``mlp{b}``: the MLP neurons of block ``b``
(``c_fc`` output and bias, ``mlp.c_proj`` input); GELU acts on each alone. GPT-2's ``Conv1D``
stores its weight ``(in, out)``: those weights are declared ``transposed``. A ``GPT2Model``
(no language-model head) returns the residual stream itself, so there ``resid`` is frozen. The vocabulary axis
of ``wte`` (tied to ``lm_head``: one tensor, listed once) and of an untied ``lm_head``, and the
position axis of ``wpe``, belong to no group (a vocabulary-sized group would make a 50k x 50k
placement matrix); these tables are charged as embeddings.

**Llama** (``LlamaForCausalLM``, ``LlamaModel``). ``resid`` as for GPT-2: ``embed_tokens``,
every ``q/k/v_proj`` and ``gate/up_proj`` input, every ``o_proj`` and ``down_proj`` output,
and the RMSNorm gains (RMSNorm divides by the root mean square over the features, blind to
their order). ``mlp{b}``: SwiGLU's ``down(silu(gate(x)) * up(x))`` multiplies neuron ``j`` of
``gate`` with neuron ``j`` of ``up``, so rows of both and column ``j`` of ``down`` move as one
neuron. ``attn{b}`` (``n_kv_heads * head_dim`` slots, one head per key/value head): with
grouped-query attention a key/value head serves a contiguous run of ``n_heads / n_kv_heads``
query heads, which are laid out as folds inside that head (``fold_order="heads"``), so a
key/value head moves with its query heads and their ``o_proj`` columns. Rotary embeddings rotate
query/key dimensions ``i`` and ``i + head_dim / 2`` together at a frequency set by ``i``, so no
dimension may change its place inside its head: the group is ``rigid``, whole heads move.
``LlamaModel`` returns the residual stream, so there ``resid`` is frozen.

**torchvision ResNet** (``ResNet`` with ``BasicBlock`` or ``Bottleneck`` blocks: resnet18 to 152,
wide ResNets). Channels are neurons. ``image`` (the input channels) and ``classes`` (``fc``'s
outputs) are frozen. The stem convolution writes ``stem``; each block adds its output to its
input, so a block without a ``downsample`` reads and writes the same channel group, and every
block of a stage shares the stage's group; a block with a ``downsample`` starts the group
``stage{s}``, which its last convolution and its projection ``downsample.0`` write (the
projection reads the previous stage's group). Inside a block, ``layer{s}.{b}.conv1`` (and
``.conv2`` for a bottleneck) are the block's own channels. A convolution's kernel joins one
channel pair (axes ``(out, in, None, None)``); BatchNorm's weight, bias, running mean and
running variance move with their channels (normalisation is per channel, in train and eval
mode alike), ``num_batches_tracked`` is free. Grouped convolutions (ResNeXt) are refused.

**Pictures.** Each family has its view (:func:`gpt2_drawing`, :func:`llama_drawing`,
:func:`resnet_drawing`): the transformer's rows of the paper's Fig. 7, or a ResNet's channel rows
with each state of a stage's stream named after its block; a drawing of more than
:data:`MAX_DRAWN` weights keeps each weight's strongest entries (:func:`strongest`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec
from .drawing import Drawing, name_transformer_rows, register_view, spec_drawing

__all__ = ["DerivedSpec", "register_spec_builder", "spec_builder", "derive_spec", "qualified_name",
           "BUILDERS", "gpt2_spec", "llama_spec", "resnet_spec", "gpt2_drawing", "llama_drawing",
           "resnet_drawing", "strongest", "MAX_DRAWN", "RESNET_LINES_PER_CHANNEL"]


@dataclass
class DerivedSpec:
    """What a builder gives :func:`bimt.attach`: the spec, and how to draw and label it."""

    spec: PermutationSpec
    view: str | None = None
    input_labels: list[str] | None = None
    output_labels: list[str] | None = None
    probes: dict = field(default_factory=dict)


#: Spec builders by class or by qualified class name (``module.QualName``).
BUILDERS: dict[object, Callable] = {}


def qualified_name(cls: type) -> str:
    """``module.Class``: how a builder is registered by name, without importing its library."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_spec_builder(cls_or_name: type | str, builder: Callable, replace: bool = False) -> None:
    """Make ``bimt.attach(module)`` use ``builder(module, layout=...)`` for modules of this class
    (or a subclass). ``cls_or_name``: the class, or its qualified name as a string."""
    if not (isinstance(cls_or_name, str) or isinstance(cls_or_name, type)):
        raise TypeError(f"register a class or its qualified name, got {cls_or_name!r}")
    if not callable(builder):
        raise TypeError(f"the builder must be callable, got {builder!r}")
    if cls_or_name in BUILDERS and not replace:
        raise ValueError(f"a spec builder for {cls_or_name!r} exists; pass replace=True")
    BUILDERS[cls_or_name] = builder


def spec_builder(module: nn.Module) -> Callable | None:
    """The builder for ``module``'s class, found by class or qualified name along its MRO."""
    for cls in type(module).__mro__:
        for key in (cls, qualified_name(cls)):
            if key in BUILDERS:
                return BUILDERS[key]
    return None


def derive_spec(module: nn.Module, layout: str | Mapping = "line") -> DerivedSpec:
    """The spec of ``module`` from its registered builder; one error line when it has none."""
    builder = spec_builder(module)
    if builder is None:
        name = qualified_name(type(module))
        known = sorted({k.__name__ if isinstance(k, type) else k.rsplit(".", 1)[-1] for k in BUILDERS})
        raise TypeError(
            f"bimt has no spec builder for {name} (it derives specs for nn.Sequential and "
            f"{', '.join(known) or 'no other class'}); write a PermutationSpec for it and call "
            f"bimt.attach(module, spec), or register a builder: "
            f"bimt.register_spec_builder({name!r}, builder)"
        )
    derived = builder(module, layout=layout)
    return derived if isinstance(derived, DerivedSpec) else DerivedSpec(derived)


# -- shared pieces ----------------------------------------------------------------------------
class _Table:
    """Groups, axes, charges, free and transposed names, filled in by a builder."""

    def __init__(self, layout):
        self.layout = layout
        self.groups: dict[str, Group] = {}
        self.axes: dict[str, tuple] = {}
        self.charges: dict[str, str] = {}
        self.free: list[str] = []
        self.transposed: list[str] = []

    def group(self, name: str, size: int, **kw) -> str:
        if isinstance(self.layout, Mapping):
            kind = self.layout.get(name, "line")
        else:
            kind = self.layout
        self.groups[name] = Group(name, make_layout(kind, size), **kw)
        return name

    def weight(self, name: str, out_g: str, in_g: str, bias: str | None = None, *,
               transposed: bool = False, kernel: int = 0) -> None:
        """A weight (``(in, out)`` storage if ``transposed``; ``kernel`` trailing free axes),
        and its bias if ``bias`` names one."""
        axes = (in_g, out_g) if transposed else (out_g, in_g)
        self.axes[name], self.charges[name] = axes + (None,) * kernel, "weight"
        if transposed:
            self.transposed.append(name)
        if bias:
            self.axes[bias], self.charges[bias] = (out_g,), "bias"

    def embedding(self, name: str, group: str) -> None:
        self.axes[name], self.charges[name] = (None, group), "embedding"

    def per_feature(self, module: nn.Module, prefix: str, group: str) -> None:
        """A norm's 1-d parameters and buffers move with ``group``; anything else is free."""
        for t, value in [*module.named_parameters(), *module.named_buffers()]:
            if value.dim() == 1:
                self.axes[f"{prefix}.{t}"] = (group,)
            else:
                self.free.append(f"{prefix}.{t}")

    def spec(self) -> PermutationSpec:
        return PermutationSpec(self.groups, self.axes, self.charges, free=tuple(self.free),
                               transposed=tuple(self.transposed))


def _core(model: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """The base model inside a head model (``model.transformer``) and its name prefix."""
    inner = model._modules.get(attr)
    return (inner, f"{attr}.") if inner is not None else (model, "")


def _lm_head(t: _Table, model: nn.Module, embed: nn.Module) -> None:
    """An untied ``lm_head``: its vocabulary axis stays ungrouped; a tied one is the embedding."""
    head = model._modules.get("lm_head")
    if head is None or head.weight is embed.weight:
        return
    t.embedding("lm_head.weight", "resid")
    if head.bias is not None:
        t.axes["lm_head.bias"], t.charges["lm_head.bias"] = (None,), "bias"


# -- GPT-2 ------------------------------------------------------------------------------------
def gpt2_spec(model: nn.Module, layout: str | Mapping = "line") -> DerivedSpec:
    """The spec of a Hugging Face ``GPT2LMHeadModel`` or ``GPT2Model`` (see the module docstring)."""
    core, pre = _core(model, "transformer")
    config = core.config
    if getattr(config, "add_cross_attention", False):
        raise ValueError("GPT-2 with cross-attention (add_cross_attention=True) has no bimt spec "
                         "builder; write a PermutationSpec for it")
    d = core.wte.weight.shape[1]
    t = _Table(layout)
    t.group("resid", d, frozen=core is model)  # a base model returns the stream itself
    t.embedding(f"{pre}wte.weight", "resid")
    t.embedding(f"{pre}wpe.weight", "resid")
    for b, block in enumerate(core.h):
        p = f"{pre}h.{b}"
        heads = block.attn.num_heads
        attn = t.group(f"attn{b}", d, heads=heads)
        mlp = t.group(f"mlp{b}", block.mlp.c_fc.weight.shape[1])
        t.per_feature(block.ln_1, f"{p}.ln_1", "resid")
        t.weight(f"{p}.attn.c_attn.weight", attn, "resid", f"{p}.attn.c_attn.bias", transposed=True)
        t.weight(f"{p}.attn.c_proj.weight", "resid", attn, f"{p}.attn.c_proj.bias", transposed=True)
        t.per_feature(block.ln_2, f"{p}.ln_2", "resid")
        t.weight(f"{p}.mlp.c_fc.weight", mlp, "resid", f"{p}.mlp.c_fc.bias", transposed=True)
        t.weight(f"{p}.mlp.c_proj.weight", "resid", mlp, f"{p}.mlp.c_proj.bias", transposed=True)
        # older transformers keep the causal mask as buffers of the attention: no neuron axis
        t.free += [f"{p}.attn.{n}" for n, _ in block.attn.named_buffers(recurse=False)]
    t.per_feature(core.ln_f, f"{pre}ln_f", "resid")
    _lm_head(t, model, core.wte)
    return DerivedSpec(t.spec(), view="gpt2")


# -- Llama ------------------------------------------------------------------------------------
def llama_spec(model: nn.Module, layout: str | Mapping = "line") -> DerivedSpec:
    """The spec of a Hugging Face ``LlamaForCausalLM`` or ``LlamaModel`` (see the module docstring)."""
    core, pre = _core(model, "model")
    config = core.config
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    t = _Table(layout)
    t.group("resid", core.embed_tokens.weight.shape[1], frozen=core is model)
    t.embedding(f"{pre}embed_tokens.weight", "resid")

    def linear(name, lin, out_g, in_g):
        t.weight(f"{name}.weight", out_g, in_g, f"{name}.bias" if lin.bias is not None else None)

    for b, layer in enumerate(core.layers):
        p = f"{pre}layers.{b}"
        sa, mlp = layer.self_attn, layer.mlp
        kv_width = sa.k_proj.weight.shape[0]
        if n_heads % n_kv or kv_width % n_kv or sa.q_proj.weight.shape[0] != kv_width * (n_heads // n_kv):
            raise ValueError(
                f"layer {b}: {n_heads} query heads over {n_kv} key/value heads of "
                f"{sa.q_proj.weight.shape[0]} and {kv_width} dimensions do not form whole groups"
            )
        attn = t.group(f"attn{b}", kv_width, heads=n_kv, rigid=True, fold_order="heads")
        hidden = t.group(f"mlp{b}", mlp.gate_proj.weight.shape[0])
        t.per_feature(layer.input_layernorm, f"{p}.input_layernorm", "resid")
        for proj in ("q_proj", "k_proj", "v_proj"):
            linear(f"{p}.self_attn.{proj}", getattr(sa, proj), attn, "resid")
        linear(f"{p}.self_attn.o_proj", sa.o_proj, "resid", attn)
        t.per_feature(layer.post_attention_layernorm, f"{p}.post_attention_layernorm", "resid")
        linear(f"{p}.mlp.gate_proj", mlp.gate_proj, hidden, "resid")
        linear(f"{p}.mlp.up_proj", mlp.up_proj, hidden, "resid")
        linear(f"{p}.mlp.down_proj", mlp.down_proj, "resid", hidden)
    t.per_feature(core.norm, f"{pre}norm", "resid")
    # the rotary frequencies are per head dimension, the same for every head: no neuron axis
    # (one table for the model, or one per attention layer in older transformers)
    t.free += [f"{pre}{n}" for n, _ in core.named_buffers() if "rotary_emb." in n]
    _lm_head(t, model, core.embed_tokens)
    return DerivedSpec(t.spec(), view="llama")


# -- torchvision ResNet -----------------------------------------------------------------------
RESNET_BLOCKS = {"BasicBlock": ("conv1", "conv2"), "Bottleneck": ("conv1", "conv2", "conv3")}


def resnet_spec(model: nn.Module, layout: str | Mapping = "line") -> DerivedSpec:
    """The spec of a torchvision ``ResNet`` of ``BasicBlock`` or ``Bottleneck`` blocks (see the
    module docstring)."""
    t = _Table(layout)

    def conv(name: str, module: nn.Conv2d, out_g: str, in_g: str) -> None:
        if module.groups != 1:
            raise ValueError(
                f"{name} is a grouped convolution (groups={module.groups}, as in ResNeXt); bimt's "
                "ResNet builder handles groups=1 only: write a PermutationSpec for this model"
            )
        bias = f"{name}.bias" if module.bias is not None else None
        t.weight(f"{name}.weight", out_g, in_g, bias, kernel=2)

    def norm(name: str, module: nn.Module, group: str) -> None:
        t.per_feature(module, name, group)

    t.group("image", model.conv1.in_channels, frozen=True)
    stream = t.group("stem", model.conv1.out_channels)
    conv("conv1", model.conv1, "stem", "image")
    norm("bn1", model.bn1, "stem")
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            kind = type(block).__name__
            if kind not in RESNET_BLOCKS:
                raise ValueError(
                    f"layer{s}.{b} is a {kind}; bimt's ResNet builder knows "
                    f"{' and '.join(RESNET_BLOCKS)} blocks: write a PermutationSpec for this model"
                )
            p = f"layer{s}.{b}"
            names = RESNET_BLOCKS[kind]
            last = getattr(block, names[-1])
            if block.downsample is not None:
                out = t.group(f"stage{s}" if f"stage{s}" not in t.groups else f"{p}.out",
                              last.out_channels)
                conv(f"{p}.downsample.0", block.downsample[0], out, stream)
                norm(f"{p}.downsample.1", block.downsample[1], out)
            else:
                out = stream
                if last.out_channels != t.groups[stream].size:
                    raise ValueError(f"{p} adds {last.out_channels} channels to the "
                                     f"{t.groups[stream].size} of its input without a downsample")
            into = stream
            for i, c in enumerate(names, 1):
                here = out if c == names[-1] else t.group(f"{p}.{c}", getattr(block, c).out_channels)
                conv(f"{p}.{c}", getattr(block, c), here, into)
                norm(f"{p}.bn{i}", getattr(block, f"bn{i}"), here)
                into = here
            stream = out
    t.group("classes", model.fc.out_features, frozen=True)
    t.weight("fc.weight", "classes", stream, "fc.bias" if model.fc.bias is not None else None)
    return DerivedSpec(t.spec(), view="resnet")


# -- pictures ---------------------------------------------------------------------------------
#: The most weights a family's picture draws: a drawing of more keeps each weight's strongest
#: entries, the same share of every weight, this many in all. A full ResNet-18 has 1.4 million
#: channel pairs and GPT-2 small 85 million weights; no picture shows that many lines, and
#: drawing them takes minutes. The renderers skip the zeroed entries.
MAX_DRAWN = 50_000


#: A ResNet's picture draws, of each convolution, at most this many channel pairs per channel of
#: its wider row: summed over its kernel, nearly every channel pair of a convolution carries a
#: weight of similar size, and drawing them all hides every structure.
RESNET_LINES_PER_CHANNEL = 2


def strongest(drawing: Drawing, limit: int = MAX_DRAWN, per_neuron: int | None = None) -> Drawing:
    """Keep (at most) ``limit`` entries of a drawing's weights, the largest in magnitude of each
    weight, in proportion to its size (and, with ``per_neuron``, at most that many per neuron
    of the weight's wider row); the others are set to zero."""
    total = sum(e.W.size for e in drawing.edges)
    for e in drawing.edges:
        keep = e.W.size if total <= limit else max(1, e.W.size * limit // total)
        if per_neuron is not None:
            keep = min(keep, per_neuron * max(e.W.shape))
        if keep < e.W.size:
            a = np.abs(e.W)
            cut = np.partition(a.reshape(-1), e.W.size - keep)[e.W.size - keep]
            e.W = np.where(a >= cut, e.W, 0.0)
    return drawing


def _blocks(wiring) -> list[str]:
    return [g[len("attn"):] for g in wiring.spec.groups if g.startswith("attn")]


def gpt2_drawing(wiring) -> Drawing:
    """GPT-2 as the transformer's rows (Embed, Atn0, Res1, MLP0, Res2, ...): ``c_attn``'s
    q, k, v folds drawn as three offset rows, the attention's ``c_proj`` reading the v fold;
    at most :data:`MAX_DRAWN` weights (:func:`strongest`)."""
    pre = "transformer." if any(n.startswith("transformer.") for n in wiring.spec.axes) else ""
    blocks = _blocks(wiring)
    return strongest(name_transformer_rows(spec_drawing(
        wiring, fold_hints={f"{pre}h.{b}.attn.c_proj.weight": (0, 2) for b in blocks},
        fold_names={f"attn{b}": ["q", "k", "v"] for b in blocks})))


def llama_drawing(wiring) -> Drawing:
    """Llama as the transformer's rows; a key/value head's query heads (folds inside the head)
    are summed onto its slots, so q, k and v share one row per block; at most
    :data:`MAX_DRAWN` weights."""
    return strongest(name_transformer_rows(spec_drawing(wiring)))


def resnet_drawing(wiring) -> Drawing:
    """A ResNet's channel rows, kernels summed; each state of a stage's residual stream named
    after the block that wrote it (``layer2.1``), a block's own channels after its convolution
    (``layer2.1.conv1``); of each convolution its strongest channel pairs,
    :data:`RESNET_LINES_PER_CHANNEL` per channel, :data:`MAX_DRAWN` in all."""
    drawing = spec_drawing(wiring)
    for e in drawing.edges:
        path = e.name.rpartition(".")[0]  # layer2.1.conv2, layer2.0.downsample.0
        if path.startswith("layer") and drawing.rows[e.out].group != path:  # writes the stream
            drawing.rows[e.out].name = ".".join(path.split(".")[:2])
    return strongest(drawing, per_neuron=RESNET_LINES_PER_CHANNEL)


register_view("gpt2", gpt2_drawing)
register_view("llama", llama_drawing)
register_view("resnet", resnet_drawing)

for _cls, _builder in [
    ("transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel", gpt2_spec),
    ("transformers.models.gpt2.modeling_gpt2.GPT2Model", gpt2_spec),
    ("transformers.models.llama.modeling_llama.LlamaForCausalLM", llama_spec),
    ("transformers.models.llama.modeling_llama.LlamaModel", llama_spec),
    ("torchvision.models.resnet.ResNet", resnet_spec),
]:
    register_spec_builder(_cls, _builder)
