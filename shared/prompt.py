"""Per-cluster trainables: the padding prompt ``P_c`` and the linear head ``H_c``.

A cluster's parameters travel as a flat ``dict[str, np.ndarray]`` (:data:`PARAMETER_NAMES`),
so the server can average them without knowing the module layout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .backbone import Backbone
from .seeding import generator

PARAMETER_NAMES = ("prompt.top", "prompt.bottom", "prompt.left", "prompt.right", "head.weight", "head.bias")
PROMPT_INIT_STD = 0.01


class PaddingPrompt(nn.Module):
    """A learnable border of ``width`` pixels added to a normalised ``size`` x ``size`` input."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        inner = size - 2 * width
        if width < 1 or inner < 1:
            raise ValueError(f"invalid prompt width {width} for a {size}px input: expected 1 <= width < {size / 2}")
        self.size, self.width = size, width
        self.top = nn.Parameter(torch.zeros(1, 3, width, size))
        self.bottom = nn.Parameter(torch.zeros(1, 3, width, size))
        self.left = nn.Parameter(torch.zeros(1, 3, inner, width))
        self.right = nn.Parameter(torch.zeros(1, 3, inner, width))
        self.register_buffer("centre", torch.zeros(1, 3, inner, inner), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        middle = torch.cat([self.left, self.centre, self.right], dim=3)
        return images + torch.cat([self.top, middle, self.bottom], dim=2)


class PromptedClassifier(nn.Module):
    """``y = H(f(x + P))`` with a frozen backbone ``f``; only ``P`` and ``H`` are trainable."""

    def __init__(self, backbone: Backbone, num_classes: int, prompt_width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt = PaddingPrompt(backbone.input_size, prompt_width)
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(self.prompt(images)))

    def get_parameters(self) -> dict[str, np.ndarray]:
        """Return copies of the trainable tensors keyed by :data:`PARAMETER_NAMES`."""
        named = dict(self.named_parameters())
        return {name: named[name].detach().cpu().numpy().copy() for name in PARAMETER_NAMES}

    def set_parameters(self, parameters: dict[str, np.ndarray]) -> None:
        """Load trainable tensors; shapes must match exactly."""
        named = dict(self.named_parameters())
        with torch.no_grad():
            for name in PARAMETER_NAMES:
                value = torch.from_numpy(np.asarray(parameters[name], dtype=np.float32))
                if value.shape != named[name].shape:
                    raise ValueError(f"parameter {name} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(named[name].shape)}")
                named[name].copy_(value)


def initial_parameters(backbone: Backbone, num_classes: int, prompt_width: int, global_seed: int,
                       cluster_key: str) -> dict[str, np.ndarray]:
    """Return the seeded initial prompt and head of the cluster named ``cluster_key``.

    The prompt starts as N(0, 0.01^2) noise and the head as U(-1/sqrt(d), 1/sqrt(d)), as
    ``nn.Linear`` would, both drawn from a generator keyed by the cluster's content.
    """
    model = PromptedClassifier(backbone, num_classes, prompt_width)
    draw = generator(global_seed, "init", cluster_key)
    bound = 1.0 / math.sqrt(backbone.feature_dim)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("prompt."):
                parameter.copy_(torch.randn(parameter.shape, generator=draw) * PROMPT_INIT_STD)
            elif name.startswith("head."):
                parameter.copy_((torch.rand(parameter.shape, generator=draw) * 2 - 1) * bound)
    return model.get_parameters()
