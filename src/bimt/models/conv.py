"""BioCNN: a small convolutional network whose channels are neurons with positions.

Every convolution's output channels are one group (on a line by default); a kernel
``w[o, i, :, :]`` joins channel ``i`` to channel ``o``, so all its entries share one length and
the channel pair's strength is ``sum |w|`` over the kernel (the spec gives conv weights the
axes ``(out, in, None, None)``). The last feature map is flattened *position-major*
(``(C, H, W) -> (H, W, C)``), so feature ``hw * C + c`` is fold ``hw`` of channel ``c``: exactly
the spec's fold convention (neuron ``f * n + s`` at slot ``s``), and a channel's swap moves all
its spatial positions in the next linear layer at once. (``nn.Flatten`` is channel-major,
``c * H * W + hw``, which the fold convention cannot express; that is why the model flattens
itself.) Normalisation layers (``norm="batch"``: BatchNorm2d / BatchNorm1d; ``"layer"``:
LayerNorm over ``(C, H, W)`` / over the features) are permutation-equivariant, and their
parameters and running statistics move with their channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.cost import CostSettings
from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec
from .mlp import make_activation
from .wiring import Wiring, WiredModule, restore_order

__all__ = ["BioCNN", "NORMS"]

#: Normalisation after each convolution; its parameters and statistics move with their channel.
NORMS = (None, "batch", "layer")


class BioCNN(WiredModule):
    """Convolutions (each followed by norm, activation, max-pool), then fully connected layers.

    Parameters
    ----------
    image : ``(channels, height, width)`` of the input; flat inputs are reshaped to it.
    channels : output channels of each convolution, e.g. ``(8, 16)``.
    kernel, pool : kernel size (padding keeps the size) and max-pool factor after each conv.
    hidden : widths of the fully connected hidden layers; ``n_classes`` outputs after them.
    norm : ``None``, ``"batch"`` or ``"layer"``.
    layout : positions of every group (channels, hidden units, outputs): ``line`` (default) or
        one entry per group. The input image's channels are a frozen group.
    settings, **cost_settings : the connection cost's settings (:class:`bimt.CostSettings`, its
        defaults when omitted), with any of its fields given as keywords on top (``A=2.0``).

    Its wiring (``model.bimt``) draws it in the ``channels`` view: one line per pair of channels
    (kernels and positions summed; :func:`bimt.viz.plot`).
    """

    def __init__(self, image: Sequence[int] = (1, 28, 28), channels: Sequence[int] = (8, 16),
                 kernel: int = 3, pool: int = 2, hidden: Sequence[int] = (32,),
                 n_classes: int = 10, activation="relu", norm: str | None = None,
                 layout="line", settings: CostSettings | None = None, **cost_settings):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; allowed: None, 'batch', 'layer'")
        image, channels, hidden = tuple(image), list(channels), list(hidden)
        for v in [*image, *channels, *hidden, n_classes, kernel, pool]:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"sizes must be positive integers, got image={image}, "
                                 f"channels={channels}, hidden={hidden}, kernel={kernel}, "
                                 f"pool={pool}, n_classes={n_classes}")
        if len(image) != 3 or not channels:
            raise ValueError(f"image is (channels, height, width) and channels lists at least one "
                             f"convolution; got image={image}, channels={channels}")
        self.image = image
        self.activation = make_activation(activation)
        self.pool = pool
        c_in, h, w = image
        names = ["image"] + [f"conv{i + 1}" for i in range(len(channels))] + [
            f"fc{i + 1}" for i in range(len(hidden))] + ["output"]
        sizes = [c_in] + channels + hidden + [n_classes]
        kinds = [layout] * len(names) if isinstance(layout, str) else list(layout)
        if len(kinds) != len(names):
            raise ValueError(f"layout lists {len(kinds)} groups, but the network has {len(names)}: "
                             f"{', '.join(names)}")
        groups = {n: Group(n, make_layout(k, s), frozen=n == "image")
                  for n, k, s in zip(names, kinds, sizes)}
        axes, charges = {"output_order": ("output",)}, {}

        def charge(name, out_g, in_g, bias_name=None):
            extra = (None, None) if name.startswith("convs") else ()
            axes[name], charges[name] = (out_g, in_g, *extra), "weight"
            if bias_name:
                axes[bias_name], charges[bias_name] = (out_g,), "bias"

        free = [f"activation.{n}" for n, _ in
                [*self.activation.named_parameters(), *self.activation.named_buffers()]]
        self.convs, self.conv_norms = nn.ModuleList(), nn.ModuleList()
        prev = c_in
        for i, c in enumerate(channels):
            self.convs.append(nn.Conv2d(prev, c, kernel, padding=kernel // 2))
            charge(f"convs.{i}.weight", names[i + 1], names[i], f"convs.{i}.bias")
            if norm == "batch":
                self.conv_norms.append(nn.BatchNorm2d(c))
                tensors = ("weight", "bias", "running_mean", "running_var")
            elif norm == "layer":
                self.conv_norms.append(nn.LayerNorm((c, h, w)))
                tensors = ("weight", "bias")
            h, w = h // pool, w // pool
            if h == 0 or w == 0:
                raise ValueError(f"image {image} is too small for {len(channels)} poolings by {pool}")
            for t in (tensors if norm else ()):
                shape = getattr(self.conv_norms[i], t).dim()
                axes[f"conv_norms.{i}.{t}"] = (names[i + 1],) + (None,) * (shape - 1)
            if norm == "batch":
                free.append(f"conv_norms.{i}.num_batches_tracked")
            prev = c
        self.feature_shape = (prev, h, w)
        widths = [prev * h * w] + hidden + [n_classes]
        self.linears, self.fc_norms = nn.ModuleList(), nn.ModuleList()
        first_fc = len(channels) + 1
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            self.linears.append(nn.Linear(a, b))
            charge(f"linears.{i}.weight", names[first_fc + i], names[first_fc + i - 1],
                   f"linears.{i}.bias")
            if i < len(hidden) and norm:
                self.fc_norms.append(nn.BatchNorm1d(b) if norm == "batch" else nn.LayerNorm(b))
                for t, value in [*self.fc_norms[i].named_parameters(),
                                 *self.fc_norms[i].named_buffers()]:
                    if value.dim() == 1:
                        axes[f"fc_norms.{i}.{t}"] = (names[first_fc + i],)
                    else:
                        free.append(f"fc_norms.{i}.{t}")
        self.norm = norm
        self.register_buffer("output_order", torch.arange(n_classes))
        self.spec = PermutationSpec(groups, axes, charges, free=free)
        settings = CostSettings.of(settings, **cost_settings)
        channels = self.image[0]  # the input row is the image's channels, not its pixels
        names = ["image"] if channels == 1 else [f"channel {c + 1}" for c in range(channels)]
        self.bimt = Wiring(self, self.spec, settings, view="channels", input_labels=names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norm:
                x = self.conv_norms[i](x)
            x = nn.functional.max_pool2d(self.activation(x), self.pool)
        x = x.permute(0, 2, 3, 1).flatten(1)  # position-major: feature hw * C + c
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < last:
                if self.norm:
                    x = self.fc_norms[i](x)
                x = self.activation(x)
        return restore_order(x, self.output_order)

    def extra_repr(self) -> str:
        return f"image={self.image}, feature map {self.feature_shape}, norm={self.norm}"

