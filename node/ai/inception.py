"""InceptionV3 (Szegedy, Vanhoucke, Ioffe, Shlens, Wojna 2016, arXiv 1512.00567), written for 2-D one-channel input.

Layer names and channel counts follow the paper's Table 1 in the form of the reference TensorFlow/Keras
implementation (which the seed used through Keras): the stem (``Conv2d_1a_3x3`` stride 2, ``Conv2d_2a_3x3``,
``Conv2d_2b_3x3``, max-pool, ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3``, max-pool), three Inception-A blocks
(``Mixed_5b``..``Mixed_5d``, 5x5 as two 3x3 in the double branch), the grid reduction ``Mixed_6a``, four
Inception-B blocks with 1x7/7x1 factorisation (``Mixed_6b``..``Mixed_6e``), the grid reduction ``Mixed_7a`` and
two Inception-C blocks with expanded 1x3/3x1 filter banks (``Mixed_7b``, ``Mixed_7c``). Every convolution is
bias-free, followed by batch normalisation (eps 0.001) and ReLU. The auxiliary classifier is left out (the seed
used the Keras backbone without it).

``width`` scales every convolution's output channels (``round(c * width)``, at least 1); ``width=1`` is the
paper's network (21.8 M backbone parameters with one input channel). The output of :class:`InceptionV3` is the
``Mixed_7c`` feature map ``[batch, channels, rows, columns]``; at 299 x 299 input that is 8 x 8, at 80 x 80
(the smallest the valid-padded stem and reductions allow is 75) it is 1 x 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BasicConv2d", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "InceptionV3"]


def _w(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class BasicConv2d(nn.Module):
    """Convolution (no bias) -> batch norm (eps 0.001) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """35 x 35 module (paper Fig. 5): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int, width: float = 1.0) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, _w(64, width), 1)
        self.branch5x5_1 = BasicConv2d(in_channels, _w(48, width), 1)
        self.branch5x5_2 = BasicConv2d(_w(48, width), _w(64, width), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, _w(64, width), 1)
        self.branch3x3dbl_2 = BasicConv2d(_w(64, width), _w(96, width), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(_w(96, width), _w(96, width), 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, _w(pool_features, width), 1)
        self.out_channels = 2 * _w(64, width) + _w(96, width) + _w(pool_features, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (paper Fig. 10): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max-pool/2."""

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, _w(384, width), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, _w(64, width), 1)
        self.branch3x3dbl_2 = BasicConv2d(_w(64, width), _w(96, width), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(_w(96, width), _w(96, width), 3, stride=2)
        self.out_channels = _w(384, width) + _w(96, width) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17 x 17 module with 7x7 factorised into 1x7 and 7x1 (paper Fig. 6, n = 7)."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float = 1.0) -> None:
        super().__init__()
        c7, c192 = _w(channels_7x7, width), _w(192, width)
        self.branch1x1 = BasicConv2d(in_channels, c192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, c192, 1)
        self.out_channels = 4 * c192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max-pool/2."""

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        c192 = _w(192, width)
        self.branch3x3_1 = BasicConv2d(in_channels, c192, 1)
        self.branch3x3_2 = BasicConv2d(c192, _w(320, width), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c192, 1)
        self.branch7x7x3_2 = BasicConv2d(c192, c192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c192, c192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c192, c192, 3, stride=2)
        self.out_channels = _w(320, width) + c192 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8 x 8 module with expanded filter banks (paper Fig. 7): 1x3 and 3x1 side by side."""

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        c384 = _w(384, width)
        self.branch1x1 = BasicConv2d(in_channels, _w(320, width), 1)
        self.branch3x3_1 = BasicConv2d(in_channels, c384, 1)
        self.branch3x3_2a = BasicConv2d(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c384, c384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, _w(448, width), 1)
        self.branch3x3dbl_2 = BasicConv2d(_w(448, width), c384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c384, c384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, _w(192, width), 1)
        self.out_channels = _w(320, width) + 4 * c384 + _w(192, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3(nn.Module):
    """The InceptionV3 backbone without its classifier: input ``[batch, in_channels, rows, columns]`` (rows and
    columns at least 75), output the ``Mixed_7c`` features ``[batch, out_channels, r', c']``.

    Parameters
    ----------
    in_channels : int
        Input channels (1: one LGE magnitude frame).
    width : float
        Channel multiplier (1.0 = the paper's widths, 2048 output channels).
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        w = float(width)
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, _w(32, w), 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(_w(32, w), _w(32, w), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(_w(32, w), _w(64, w), 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(_w(64, w), _w(80, w), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(_w(80, w), _w(192, w), 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(_w(192, w), 32, w)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, w)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, w)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, w)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, w)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, w)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, w)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, w)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, w)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, w)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, w)
        self.out_channels = self.Mixed_7c.out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # Keras' default (glorot uniform), as in the seed's framework
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1, self.Conv2d_3b_1x1,
                      self.Conv2d_4a_3x3, self.maxpool2, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = layer(x)
        return x
