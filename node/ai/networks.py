"""Network definitions of the CardioNode bundles (torch.nn only; no pretrained weights).

Polar-map networks take maps on the canonical grid ``[batch, channel, n_u=40,
n_psi=72]`` (row 0 apex, column j = azimuth 5j deg from anterior toward
septum). Convolutions pad circularly in azimuth (the map is periodic) and by
edge replication along the long axis. Every network returns logits
``[batch, n_outputs]`` so MONAI's Grad-CAM can pick a class.

The bundles' ``configs/inference.json`` instantiate these classes by dotted
name (``"_target_": "node.ai.networks.CADPolarNet"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PolarConv", "PolarEncoder", "CADPolarNet", "TracerHeadsNet", "CRTResponseNet", "TabularMLP", "PetMfrNet"]


class PolarConv(nn.Module):
    """3x3 convolution on polar maps: circular padding in azimuth (last axis), replicate along u."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=0, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 0, 0), mode="circular")
        x = F.pad(x, (0, 0, 1, 1), mode="replicate")
        return F.relu(self.norm(self.conv(x)))


class PolarEncoder(nn.Module):
    """Stack of PolarConv stages, each followed by 2x2 max pooling except the last.

    ``stages`` lists output channels; the last stage (``stage{n-1}``) is the
    Grad-CAM target layer (resolution ``40 / 2**(n-1)`` x ``72 / 2**(n-1)``).
    """

    def __init__(self, in_channels: int, stages: tuple[int, ...] = (16, 32, 48)) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {}
        c = in_channels
        for k, out in enumerate(stages):
            layers[f"stage{k}"] = PolarConv(c, out)
            if k < len(stages) - 1:
                layers[f"pool{k}"] = nn.MaxPool2d(2)
            c = out
        self.body = nn.Sequential()
        for name, layer in layers.items():
            self.body.add_module(name, layer)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TabularMLP(nn.Module):
    """Small MLP for tabular features ``[batch, n_features]``."""

    def __init__(self, n_features: int, hidden: int = 32, out: int = 16) -> None:
        super().__init__()
        self.n_features = n_features
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _territory_weights(stride: int) -> torch.Tensor:
    """Fraction of each encoder cell (``stride`` x ``stride`` grid cells) in LAD, LCx, RCA: ``[3, 40/stride, 72/stride]``."""
    from node.quant.segments import DEFAULT_GRID, TERRITORIES, TERRITORY_SEGMENTS

    ids = DEFAULT_GRID.segment_ids()
    masks = torch.tensor([[[float(v in TERRITORY_SEGMENTS[t]) for v in row] for row in ids] for t in TERRITORIES])
    return F.avg_pool2d(masks[None], stride)[0]


class CADPolarNet(nn.Module):
    """Obstructive CAD from stress perfusion, motion and thickening polar maps plus tabular data.

    Input ``x`` ``[batch, 5, 40, 72]`` (perfusion/100, motion/10 mm,
    thickening/50 %, deficit 0..1, TPD severity/4 against normal limits); ``tabular`` ``[batch, n_tabular]`` (age, sex, EDV, ESV,
    normalised as in :mod:`node.ai.features`). Output logits ``[batch, 4]``:
    patient, LAD, LCx, RCA.

    The encoder ends in a one-channel *evidence map* ``[batch, 1, 10, 18]``
    (layer ``evidence``) that is pooled by log-sum-exp (sharpness ``r``) over
    the whole LV for the patient output and over each territory (cell weights
    = territory fraction) for the territory outputs; the tabular MLP adds an
    offset. Evidence therefore has to sit where the disease is, which is what
    Grad-CAM on the encoder's last stage shows.
    """

    territory_weights: torch.Tensor  # registered buffer

    def __init__(self, in_channels: int = 5, n_tabular: int = 4, stages: tuple[int, ...] = (16, 32, 48), n_outputs: int = 4,
                 sharpness: float = 4.0) -> None:
        super().__init__()
        if n_outputs != 4:
            raise ValueError("CADPolarNet has 4 outputs: patient, LAD, LCx, RCA")
        self.encoder = PolarEncoder(in_channels, tuple(stages))
        self.evidence = nn.Conv2d(self.encoder.out_channels, 1, kernel_size=1)
        self.tabular = TabularMLP(n_tabular, 16, 8)
        self.offset = nn.Linear(8, n_outputs)
        self.scale = nn.Parameter(torch.ones(n_outputs))
        self.sharpness = float(sharpness)
        self.register_buffer("territory_weights", _territory_weights(2 ** (len(stages) - 1)), persistent=False)

    def _lse(self, e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        r = self.sharpness
        w = w.clamp(min=1e-6)
        return (torch.logsumexp(r * e + torch.log(w), dim=(-2, -1)) - torch.log(w.sum(dim=(-2, -1)))) / r

    def forward(self, x: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        e = self.evidence(self.encoder(x))  # [b, 1, h, w]
        whole = torch.ones_like(self.territory_weights[:1])
        weights = torch.cat([whole, self.territory_weights], dim=0)  # [4, h, w]
        pooled = self._lse(e, weights[None])  # [b, 4]
        if tabular is None:
            tabular = torch.zeros(x.shape[0], self.tabular.n_features, dtype=x.dtype, device=x.device)
        return pooled * self.scale + self.offset(self.tabular(tabular))


class TracerHeadsNet(nn.Module):
    """Shared polar-map encoder with a Tc-99m head and a Tl-201 head.

    Input ``[batch, 6, 40, 72]``: stress perfusion/100, rest perfusion/100,
    stress deficit, rest deficit (0..1 against normal limits), stress-present
    mask, rest-present mask (a missing map is all zeros with a zero mask
    channel; that is how stress-only, rest-only and dual-input variants share
    one set of weights). Output logits ``[batch, 2]``: column 0
    Tc-99m head (abnormal perfusion), column 1 Tl-201 head (intermediate-or-high
    risk). Only the head matching the study's tracer is reported.
    """

    def __init__(self, in_channels: int = 6, stages: tuple[int, ...] = (16, 32, 48)) -> None:
        super().__init__()
        self.encoder = PolarEncoder(in_channels, tuple(stages))
        width = self.encoder.out_channels * 2
        self.tc99m_head = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1))
        self.tl201_head = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return torch.cat([self.tc99m_head(pooled), self.tl201_head(pooled)], dim=1)


class CRTResponseNet(nn.Module):
    """CRT response from a tiled 128x128 image of four rest gated bull's-eyes plus tabular features.

    VGG16-style image branch (stacks of 3x3 convolutions and 2x2 max pooling,
    channels doubling per block, scaled down from VGG16's 64..512 to fit a CPU
    and a small training set), global average pooling, concatenated with an
    MLP on ``n_tabular`` features (values already imputed, plus missing
    indicators). Input ``x`` ``[batch, 1, 128, 128]``, ``tabular``
    ``[batch, n_tabular]``; output logits ``[batch, 1]``.
    """

    def __init__(self, n_tabular: int = 13, blocks: tuple[tuple[int, ...], ...] = ((8,), (16, 16), (32, 32), (48, 48))) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for block in blocks:
            for out in block:
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                c = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.tabular = TabularMLP(n_tabular, 32, 16)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c + 16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))
        if tabular is None:
            tabular = torch.zeros(x.shape[0], self.tabular.n_features, dtype=x.dtype, device=x.device)
        return self.head(torch.cat([f, self.tabular(tabular)], dim=1))


class _TraitHead(nn.Module):
    """One risk-trait head of :class:`PetMfrNet`: its own copy of the backbone's last convolution and its
    normalisation (``conv``/``norm``, replacing the last block's final conv + batch norm) and a 2-logit layer."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size[0], stride=conv.stride[0],
                              padding=conv.padding if isinstance(conv.padding, str) else conv.padding[0],
                              bias=conv.bias is not None)
        self.norm = nn.BatchNorm2d(norm.num_features)
        self.fc = nn.Linear(norm.num_features, 2)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm(self.conv(hidden)) + residual)
        return self.fc(out.mean(dim=(2, 3)))


class PetMfrNet(nn.Module):
    """The PET flow-reserve network (Yeung 2022): a MONAI ``ResNet`` with 19 outputs plus risk-trait heads.

    ``backbone`` is ``monai.networks.nets.ResNet`` (2-D; ``block`` ``"bottleneck"`` with ``layers``
    [3, 4, 6, 3] is ResNet-50), first convolution ``in_channels`` -> ``inplanes[0]`` with kernel
    ``conv1_size`` and stride ``conv1_stride``, then (``max_pool``) 3x3/2 max pooling; non-inplace
    ReLU (Grad-CAM hooks). Input ``[batch, in_channels, 40, 72]`` polar maps
    (:func:`node.ai.pet_mfr.network_input`); :meth:`forward` returns ``[batch, 19]``: columns
    0-16 the regressed segment MFR (AHA 1..17, ratio), 17-18 the logits of "MFR impaired in at
    least one segment" (absent, present).

    :meth:`trait_logits` returns ``[batch, n_traits, 2]``: each trait head re-learns the last
    convolution + batch norm of the last residual block and its own output layer on the frozen
    rest of the network (the seed's "last 3 layers": last conv, its norm, the classifier).
    """

    def __init__(self, in_channels: int = 3, block: str = "bottleneck", layers: tuple[int, ...] = (3, 4, 6, 3),
                 inplanes: tuple[int, ...] = (64, 128, 256, 512), conv1_size: int = 3, conv1_stride: int = 2,
                 max_pool: bool = True, n_outputs: int = 19, n_traits: int = 5) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        self.backbone = ResNet(block, list(layers), list(inplanes), spatial_dims=2, n_input_channels=in_channels,
                               conv1_t_size=conv1_size, conv1_t_stride=conv1_stride, no_max_pool=not max_pool,
                               num_classes=n_outputs, act=("relu", {"inplace": False}))
        last = self.backbone.layer4[-1]
        self._last_conv = "conv3" if hasattr(last, "conv3") else "conv2"
        conv, norm = getattr(last, self._last_conv), getattr(last, "bn3" if self._last_conv == "conv3" else "bn2")
        self.trait_heads = nn.ModuleList([_TraitHead(conv, norm) for _ in range(n_traits)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def last_block_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input of the last residual block's final convolution and that block's residual branch."""
        b: Any = self.backbone
        h = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            h = b.maxpool(h)
        h = b.layer4[:-1](b.layer3(b.layer2(b.layer1(h))))
        last = b.layer4[-1]
        residual = h if last.downsample is None else last.downsample(h)
        hidden = last.act(last.bn1(last.conv1(h)))
        if self._last_conv == "conv3":
            hidden = last.act(last.bn2(last.conv2(hidden)))
        return hidden, residual

    def trait_logits(self, x: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.last_block_inputs(x)
        return torch.stack([head(hidden, residual) for head in self.trait_heads], dim=1)
