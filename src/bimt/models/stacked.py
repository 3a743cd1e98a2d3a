"""Many BioMLPs of one shape as one stacked model, for training runs side by side.

The paper's networks are tiny (a symbolic step is ~0.3 MFLOP), so one run at a time is pure
dispatch overhead. A :class:`StackedMLP` holds S members' parameters stacked to ``(S, ...)``;
its forward pass is a chain of ``torch.baddbmm``, and :meth:`StackedMLP.loss_and_grad` writes
each member's gradient by hand (for these sizes autograd's bookkeeping costs more than the
arithmetic). The training loop (:mod:`bimt.training.loop`) steps all members at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import BioMLP

__all__ = ["StackedMLP", "stackable", "member_losses"]


def stackable(model: nn.Module) -> bool:
    """Whether runs of this model can be trained as one :class:`StackedMLP`."""
    return isinstance(model, BioMLP) and not any(True for _ in model.activation.parameters())


class StackedMLP(nn.Module):
    """S BioMLPs of one shape as stacked tensors; ``forward`` maps ``(S, n, ...)`` inputs.

    Tensors keep the member's names (``linears.0.weight`` holds ``(S, out, in)``), in the
    member's parameter order, so optimizer states convert one to one.
    """

    def __init__(self, members: list[BioMLP]):
        super().__init__()
        first = members[0]
        for m in members:
            if not isinstance(m, BioMLP):
                raise ValueError(
                    f"batched training stacks BioMLP models, got {type(m).__name__}; train this "
                    "task one run at a time (bimt.fit without seeds, or reproduce --backend processes)"
                )
            if m.widths != first.widths or (m.embedding is None) != (first.embedding is None):
                raise ValueError(f"members differ in shape: {m.widths} vs {first.widths}")
        if any(True for _ in first.activation.parameters()):
            raise ValueError("batched training needs a parameter-free activation")
        self.widths = first.widths
        self.activation = first.activation
        self.S = len(members)
        self.names = [n for n, _ in first.named_parameters()]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        self._stacked: dict[str, torch.Tensor] = {}
        states = [m.state_dict() for m in members]
        for name in self.names:
            p = nn.Parameter(torch.stack([s[name] for s in states]).contiguous())
            self.register_parameter(name.replace(".", "__"), p)
            self._stacked[name] = p
        for name in self.buffer_names:
            b = torch.stack([s[name] for s in states]).contiguous()
            self.register_buffer(name.replace(".", "__"), b)
        self.n_layers = len(first.linears)
        self.has_bias = first.linears[0].bias is not None
        self.has_embedding = first.embedding is not None
        # the hot loop's tensors, looked up once (module attribute lookups cost microseconds)
        self._weights = [self._stacked[f"linears.{i}.weight"] for i in range(self.n_layers)]
        self._biases = ([self._stacked[f"linears.{i}.bias"] for i in range(self.n_layers)]
                        if self.has_bias else None)

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def member_views(self, s: int) -> dict[str, torch.Tensor]:
        """Member ``s``'s tensors as views into the stack (the swap engine writes through them)."""
        return {n: self.get(n).detach()[s] for n in self.names + self.buffer_names}

    def member_state(self, s: int) -> dict[str, torch.Tensor]:
        return {n: self.get(n).detach()[s].clone() for n in self.names + self.buffer_names}

    def _input_layer(self, X: torch.Tensor):
        """Each member's input layer in slot order, and (token inputs) the rows of the flattened
        ``(S * vocab, d)`` embedding that it read, which the backward pass scatters into."""
        S, n = X.shape[0], X.shape[1]
        if self.has_embedding:
            emb = self.get("embedding")
            V = emb.shape[1]
            rows = X + (torch.arange(S, device=X.device) * V).view(S, 1, 1)
            return emb.reshape(S * V, -1)[rows].flatten(-2), rows
        order = self.get("input_order")
        return torch.gather(X, 2, order.unsqueeze(1).expand(S, n, order.shape[1])), None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        x, _ = self._input_layer(X)
        for i in range(self.n_layers):
            W = self.get(f"linears.{i}.weight").transpose(1, 2)
            if self.has_bias:
                x = torch.baddbmm(self.get(f"linears.{i}.bias").unsqueeze(1), x, W)
            else:
                x = torch.bmm(x, W)
            if i < self.n_layers - 1:
                x = self.activation(x)
        order = self.get("output_order").unsqueeze(1).expand_as(x)
        return torch.zeros_like(x).scatter(2, order, x)


    # -- the hand-written backward pass ------------------------------------------------------
    def loss_and_grad(self, X: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        """Each member's loss ``(S,)``; every parameter's ``.grad`` set to its gradient.

        The same numbers as ``losses.sum().backward()``, written out by hand: for these tiny
        networks the autograd engine's bookkeeping costs more than the arithmetic. Activations
        without a known derivative fall back to autograd.
        """
        backward = _ACTIVATION_BACKWARD.get(type(self.activation))
        if backward is None:
            for p in self.parameters():
                p.grad = None
            losses = member_losses(self(X), y, loss)
            losses.sum().backward()
            return losses.detach()
        with torch.no_grad():
            n = X.shape[1]
            x, token_rows = self._input_layer(X)
            inputs, pre, post = [], [], []
            weights, biases, act = self._weights, self._biases, self.activation.forward
            for i, W in enumerate(weights):
                inputs.append(x)
                if biases is not None:
                    z = torch.baddbmm(biases[i].unsqueeze(1), x, W.transpose(1, 2))
                else:
                    z = torch.bmm(x, W.transpose(1, 2))
                if i < self.n_layers - 1:
                    x = act(z)
                    pre.append(z)
                    post.append(x)
                else:
                    x = z
            order = self.get("output_order").unsqueeze(1).expand_as(x)
            out = torch.zeros_like(x).scatter(2, order, x)
            if loss == "mse":
                diff = out - y
                per = diff[0].numel()
                losses = (diff * diff).flatten(1).mean(1)
                d_out = diff * (2.0 / per)
            else:
                logp = torch.log_softmax(out, -1)
                losses = -logp.gather(2, y.unsqueeze(2)).squeeze(2).mean(1)
                d_out = logp.exp().scatter_add(2, y.unsqueeze(2), -torch.ones_like(y, dtype=out.dtype).unsqueeze(2))
                d_out = d_out / n
            g = torch.gather(d_out, 2, order)  # slot j of the output layer feeds output order[j]
            for i in range(self.n_layers - 1, -1, -1):
                W = weights[i]
                W.grad = torch.bmm(g.transpose(1, 2), inputs[i])
                if biases is not None:
                    biases[i].grad = g.sum(1)
                if i > 0:
                    g = backward(self.activation, torch.bmm(g, W), pre[i - 1], post[i - 1])
                elif self.has_embedding:
                    emb = self.get("embedding")
                    dx = torch.bmm(g, W).reshape(token_rows.numel(), -1)
                    emb.grad = torch.zeros_like(emb).reshape(-1, emb.shape[-1]).index_add_(
                        0, token_rows.reshape(-1), dx).reshape(emb.shape)
        return losses


_ACTIVATION_BACKWARD = {
    nn.SiLU: lambda act, g, z, a: torch.ops.aten.silu_backward(g, z),
    nn.ReLU: lambda act, g, z, a: torch.ops.aten.threshold_backward(g, a, 0),
    nn.Tanh: lambda act, g, z, a: torch.ops.aten.tanh_backward(g, a),
    nn.Sigmoid: lambda act, g, z, a: torch.ops.aten.sigmoid_backward(g, a),
    nn.GELU: lambda act, g, z, a: torch.ops.aten.gelu_backward(g, z, approximate=act.approximate),
    nn.Identity: lambda act, g, z, a: g,
}


def member_losses(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Each member's mean loss, shape ``(S,)`` (their sum has each member's own gradient)."""
    if loss == "mse":
        return ((out - y) ** 2).flatten(1).mean(1)
    S, n = y.shape[0], y.shape[1]
    return F.cross_entropy(out.reshape(S * n, -1), y.reshape(-1), reduction="none").view(S, n).mean(1)
