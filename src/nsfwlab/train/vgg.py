"""The from-scratch baseline of seed 001: VGG-16 (13 3x3 convolutions in five blocks, each block
followed by 2x2 max-pooling), then Flatten -> Dense 128 -> Dropout 0.5 -> Dense 64 -> Dropout 0.5
-> Dense 2. It takes the same input as open_nsfw (NCHW, BGR, mean-subtracted, 224x224) and returns
logits ``[sfw, nsfw]``; the input is scaled by 1/128 inside the model so that training from
random He-initialised weights starts with unit-scale activations. 14.7 M convolution weights,
15.4 GMAC per image: about 14x the compute of open_nsfw."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG16", "VGG16_BLOCKS"]

#: (convolutions, channels) of each block.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class VGG16(nn.Module):
    """VGG-16 as in the seed tutorial (no batch-norm), with ``forward_features``/``forward_head``."""

    input_scale = 1.0 / 128.0

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for convs, ch in VGG16_BLOCKS:
            for _ in range(convs):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = ch
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(64, 2),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW 224x224 input -> the (N, 512, 7, 7) feature map."""
        return self.features(x * self.input_scale)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
