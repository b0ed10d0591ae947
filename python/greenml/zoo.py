"""``greenml.zoo``: compact CIFAR-style (3x32x32 input) CNNs of the energy study, in plain PyTorch.

The architectures of "Computing Within Limits" (Mavromatis et al., 2024), which used the
well-known CIFAR-10 versions (3x3 stems, no ImageNet downsampling), written for this package
(no torchvision needed)::

    greenml.zoo.names()                              # ['densenet121', 'dla', 'dpn26', ...]
    net = greenml.zoo.create("resnet18", width=0.25, num_classes=10)

``width`` scales every channel count (rounded, never below what grouped convolutions need), so
tests and demos can run tiny versions; at ``width=1`` the parameter counts are the paper's
(ResNet18 11.2 M, VGG19 20.0 M, ...; see ``PAPER_PARAMS_M``). torch is imported on first use.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence

from ._errors import ConfigError

__all__ = ["PAPER_MODELS", "PAPER_PARAMS_M", "create", "names"]

#: Parameter counts (millions) in the paper's table, for the 14 models it measured.
PAPER_PARAMS_M: Dict[str, float] = {
    "lenet": 0.062,
    "mobilenet": 3.22,
    "efficientnetb0": 3.60,
    "dla": 15.1,
    "resnet18": 11.2,
    "vgg19": 20.0,
    "preactresnet18": 11.2,
    "googlenet": 6.17,
    "densenet121": 6.96,
    "resnext29_2x64d": 9.13,
    "mobilenetv2": 2.30,
    "senet18": 11.3,
    "regnetx_200mf": 2.32,
    "dpn26": 11.6,
}

#: The 14 models of the paper, in its table's order.
PAPER_MODELS = tuple(PAPER_PARAMS_M)


def _c(n: float, width: float, divisor: int = 1) -> int:
    """``n`` channels scaled by ``width``, rounded to a multiple of ``divisor`` (at least one)."""
    return max(divisor, int(round(n * width / divisor)) * divisor)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "greenml.zoo builds PyTorch models: install PyTorch first, e.g. "
            "`pip install 'greenml[study]'`"
        ) from None
    return torch


# The model classes are defined on first use so that importing greenml.zoo never imports torch.
_BUILDERS: Dict[str, Callable[[float, int], Any]] = {}


def _define() -> None:  # noqa: C901 - one place for all the architectures
    if _BUILDERS:
        return
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    def bn_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> Any:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    # ------------------------------------------------------------------------------ LeNet, MLP
    class LeNet(nn.Module):
        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            c1, c2 = _c(6, w), _c(16, w)
            self.conv1 = nn.Conv2d(3, c1, 5)
            self.conv2 = nn.Conv2d(c1, c2, 5)
            self.fc1 = nn.Linear(c2 * 25, _c(120, w))
            self.fc2 = nn.Linear(_c(120, w), _c(84, w))
            self.fc3 = nn.Linear(_c(84, w), nc)

        def forward(self, x: Any) -> Any:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.relu(self.fc1(x.flatten(1)))
            return self.fc3(F.relu(self.fc2(x)))

    def mlp(w: float, nc: int) -> Any:
        h1, h2 = _c(512, w), _c(256, w)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, nc),
        )

    # ------------------------------------------------------------------------------------- VGG
    vgg_cfg = {
        "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
        + [512, 512, 512, "M", 512, 512, 512, "M"],
        "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
        + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    }

    def vgg(cfg: Sequence[Any], w: float, nc: int) -> Any:
        layers: List[Any] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = _c(v, w)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin, nc))

    # --------------------------------------------------------------------- ResNet family, SENet
    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int = 1, se: bool = False) -> None:
            super().__init__()
            self.body = nn.Sequential(
                bn_conv(cin, cout, 3, stride), nn.ReLU(), bn_conv(cout, cout, 3)
            )
            self.short = bn_conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None
            self.se = (
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(1),
                    nn.Conv2d(cout, max(1, cout // 16), 1),
                    nn.ReLU(),
                    nn.Conv2d(max(1, cout // 16), cout, 1),
                    nn.Sigmoid(),
                )
                if se
                else None
            )

        def forward(self, x: Any) -> Any:
            out = self.body(x)
            if self.se is not None:
                out = out * self.se(out)
            return F.relu(out + (x if self.short is None else self.short(x)))

    class PreActBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.short = (
                nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
            )

        def forward(self, x: Any) -> Any:
            out = F.relu(self.bn1(x))
            short = x if self.short is None else self.short(out)
            out = self.conv2(F.relu(self.bn2(self.conv1(out))))
            return out + short

    class ResNet(nn.Module):
        def __init__(self, block: Any, depths: Sequence[int], w: float, nc: int, **kw: Any):
            super().__init__()
            c0 = _c(64, w)
            self.stem = (
                nn.Conv2d(3, c0, 3, 1, 1, bias=False)
                if block is PreActBlock
                else nn.Sequential(bn_conv(3, c0, 3), nn.ReLU())
            )
            layers: List[Any] = []
            cin = c0
            for i, depth in enumerate(depths):
                cout = _c(64 * 2**i, w)
                for j in range(depth):
                    layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1, **kw))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, nc)

        def forward(self, x: Any) -> Any:
            out = self.layers(self.stem(x))
            return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    # ---------------------------------------------------------------------------- MobileNets
    class MobileNet(nn.Module):
        cfg = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2)]
        cfg += [1024]

        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            cin = _c(32, w)
            layers: List[Any] = [bn_conv(3, cin, 3), nn.ReLU()]
            for v in self.cfg:
                cout, stride = (v, 1) if isinstance(v, int) else v
                cout = _c(cout, w)
                layers += [bn_conv(cin, cin, 3, stride, groups=cin), nn.ReLU()]
                layers += [bn_conv(cin, cout, 1), nn.ReLU()]
                cin = cout
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
            super().__init__()
            mid = expansion * cin
            self.stride = stride
            self.body = nn.Sequential(
                bn_conv(cin, mid, 1),
                nn.ReLU(),
                bn_conv(mid, mid, 3, stride, groups=mid),
                nn.ReLU(),
                bn_conv(mid, cout, 1),
            )
            self.short = bn_conv(cin, cout, 1) if stride == 1 and cin != cout else None

        def forward(self, x: Any) -> Any:
            out = self.body(x)
            if self.stride != 1:
                return out
            return out + (x if self.short is None else self.short(x))

    class MobileNetV2(nn.Module):
        cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
        cfg += [(6, 160, 3, 2), (6, 320, 1, 1)]

        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            cin = _c(32, w)
            layers: List[Any] = [bn_conv(3, cin, 3), nn.ReLU()]
            for expansion, cout, n, stride in self.cfg:
                for j in range(n):
                    layers.append(
                        InvertedResidual(cin, _c(cout, w), expansion, stride if j == 0 else 1)
                    )
                    cin = _c(cout, w)
            head = _c(1280, w)
            layers += [bn_conv(cin, head, 1), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(head, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    # -------------------------------------------------------------------------- EfficientNet
    class MBConv(nn.Module):
        def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int) -> None:
            super().__init__()
            mid = expansion * cin
            se = max(1, int(cin * 0.25))
            layers: List[Any] = []
            if expansion != 1:
                layers += [bn_conv(cin, mid, 1), nn.SiLU()]
            layers += [bn_conv(mid, mid, k, stride, groups=mid), nn.SiLU()]
            self.expand = nn.Sequential(*layers)
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(mid, se, 1),
                nn.SiLU(),
                nn.Conv2d(se, mid, 1),
                nn.Sigmoid(),
            )
            self.project = bn_conv(mid, cout, 1)
            self.skip = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            out = self.expand(x)
            out = self.project(out * self.se(out))
            return out + x if self.skip else out

    class EfficientNetB0(nn.Module):
        cfg = [(1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2)]
        cfg += [(6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)]

        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            cin = _c(32, w)
            layers: List[Any] = [bn_conv(3, cin, 3), nn.SiLU()]
            for expansion, cout, n, k, stride in self.cfg:
                for j in range(n):
                    layers.append(MBConv(cin, _c(cout, w), k, stride if j == 0 else 1, expansion))
                    cin = _c(cout, w)
            self.features = nn.Sequential(*layers)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(cin, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(self.drop(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)))

    # ------------------------------------------------------------------------------ DenseNet
    class DenseLayer(nn.Module):
        def __init__(self, cin: int, growth: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth),
                nn.ReLU(),
                nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            )

        def forward(self, x: Any) -> Any:
            return torch.cat([self.body(x), x], 1)

    class DenseNet(nn.Module):
        def __init__(self, depths: Sequence[int], w: float, nc: int) -> None:
            super().__init__()
            growth = _c(32, w)
            c = 2 * growth
            layers: List[Any] = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
            for i, n in enumerate(depths):
                for _ in range(n):
                    layers.append(DenseLayer(c, growth))
                    c += growth
                if i < len(depths) - 1:
                    out = c // 2
                    layers += [
                        nn.BatchNorm2d(c),
                        nn.ReLU(),
                        nn.Conv2d(c, out, 1, bias=False),
                        nn.AvgPool2d(2),
                    ]
                    c = out
            layers += [nn.BatchNorm2d(c), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    # ----------------------------------------------------------------------------- GoogLeNet
    class Inception(nn.Module):
        def __init__(self, cin: int, n1: int, r3: int, n3: int, r5: int, n5: int, pp: int):
            super().__init__()

            def cbr(a: int, b: int, k: int) -> List[Any]:
                return [nn.Conv2d(a, b, k, padding=k // 2), nn.BatchNorm2d(b), nn.ReLU()]

            self.b1 = nn.Sequential(*cbr(cin, n1, 1))
            self.b2 = nn.Sequential(*cbr(cin, r3, 1), *cbr(r3, n3, 3))
            self.b3 = nn.Sequential(*cbr(cin, r5, 1), *cbr(r5, n5, 3), *cbr(n5, n5, 3))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *cbr(cin, pp, 1))
            self.out_channels = n1 + n3 + n5 + pp

        def forward(self, x: Any) -> Any:
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    class GoogLeNet(nn.Module):
        cfg = [
            (64, 96, 128, 16, 32, 32),
            (128, 128, 192, 32, 96, 64),
            "M",
            (192, 96, 208, 16, 48, 64),
            (160, 112, 224, 24, 64, 64),
            (128, 128, 256, 24, 64, 64),
            (112, 144, 288, 32, 64, 64),
            (256, 160, 320, 32, 128, 128),
            "M",
            (256, 160, 320, 32, 128, 128),
            (384, 192, 384, 48, 128, 128),
        ]

        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            c = _c(192, w)
            layers: List[Any] = [nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            for v in self.cfg:
                if v == "M":
                    layers.append(nn.MaxPool2d(3, 2, 1))
                    continue
                block = Inception(c, *(_c(n, w) for n in v))
                layers.append(block)
                c = block.out_channels
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    # ------------------------------------------------------------------------------- ResNeXt
    class ResNeXtBlock(nn.Module):
        def __init__(self, cin: int, cardinality: int, group_width: int, stride: int) -> None:
            super().__init__()
            gw = cardinality * group_width
            self.body = nn.Sequential(
                bn_conv(cin, gw, 1),
                nn.ReLU(),
                bn_conv(gw, gw, 3, stride, groups=cardinality),
                nn.ReLU(),
                bn_conv(gw, 2 * gw, 1),
            )
            self.short = bn_conv(cin, 2 * gw, 1, stride) if stride != 1 or cin != 2 * gw else None
            self.out_channels = 2 * gw

        def forward(self, x: Any) -> Any:
            out = self.body(x)
            return F.relu(out + (x if self.short is None else self.short(x)))

    class ResNeXt29(nn.Module):
        def __init__(self, cardinality: int, bottleneck: int, w: float, nc: int) -> None:
            super().__init__()
            c = _c(64, w)
            layers: List[Any] = [bn_conv(3, c, 1), nn.ReLU()]
            bw = _c(bottleneck, w)
            for i in range(3):
                for j in range(3):
                    block = ResNeXtBlock(c, cardinality, bw, 2 if (i > 0 and j == 0) else 1)
                    layers.append(block)
                    c = block.out_channels
                bw *= 2
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    # -------------------------------------------------------------------------------- RegNet
    class RegNetBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                bn_conv(cin, cout, 1),
                nn.ReLU(),
                bn_conv(cout, cout, 3, stride, groups=cout // group_width),
                nn.ReLU(),
                bn_conv(cout, cout, 1),
            )
            self.short = bn_conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x: Any) -> Any:
            out = self.body(x)
            return F.relu(out + (x if self.short is None else self.short(x)))

    class RegNetX200MF(nn.Module):
        cfg = [(1, 24, 1), (1, 56, 1), (4, 152, 2), (7, 368, 2)]  # depth, width, stride

        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            gw = _c(8, min(w, 1.0))
            c = _c(32, w)
            layers: List[Any] = [bn_conv(3, c, 3), nn.ReLU()]
            for depth, cout, stride in self.cfg:
                cout = _c(cout, w, gw)
                for j in range(depth):
                    layers.append(RegNetBlock(c, cout, stride if j == 0 else 1, gw))
                    c = cout
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    # ----------------------------------------------------------------------------------- DPN
    class DPNBlock(nn.Module):
        def __init__(
            self, cin: int, mid: int, out: int, dense: int, stride: int, first: bool, groups: int
        ) -> None:
            super().__init__()
            self.out = out
            self.body = nn.Sequential(
                bn_conv(cin, mid, 1),
                nn.ReLU(),
                bn_conv(mid, mid, 3, stride, groups=groups),
                nn.ReLU(),
                bn_conv(mid, out + dense, 1),
            )
            self.short = bn_conv(cin, out + dense, 1, stride) if first else None

        def forward(self, x: Any) -> Any:
            out = self.body(x)
            x = x if self.short is None else self.short(x)
            d = self.out
            return F.relu(torch.cat([x[:, :d] + out[:, :d], x[:, d:], out[:, d:]], 1))

    class DPN26(nn.Module):
        cfg = [(96, 256, 2, 16), (192, 512, 2, 32), (384, 1024, 2, 24), (768, 2048, 2, 128)]

        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            groups = _c(32, min(w, 1.0))
            c = _c(64, w)
            layers: List[Any] = [bn_conv(3, c, 3), nn.ReLU()]
            for i, (mid, out, n, dense) in enumerate(self.cfg):
                mid, out, dense = _c(mid, w, groups), _c(out, w), _c(dense, w)
                for j in range(n):
                    stride = 2 if (i > 0 and j == 0) else 1
                    layers.append(DPNBlock(c, mid, out, dense, stride, j == 0, groups))
                    c = out + (j + 2) * dense
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    # ------------------------------------------------------------------------------ SimpleDLA
    class Root(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv = bn_conv(cin, cout, 1)

        def forward(self, xs: List[Any]) -> Any:
            return F.relu(self.conv(torch.cat(xs, 1)))

    class Tree(nn.Module):
        def __init__(self, cin: int, cout: int, level: int, stride: int) -> None:
            super().__init__()
            self.root = Root(2 * cout, cout)
            if level == 1:
                self.left = BasicBlock(cin, cout, stride)
                self.right = BasicBlock(cout, cout, 1)
            else:
                self.left = Tree(cin, cout, level - 1, stride)
                self.right = Tree(cout, cout, level - 1, 1)

        def forward(self, x: Any) -> Any:
            a = self.left(x)
            return self.root([a, self.right(a)])

    class SimpleDLA(nn.Module):
        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            c16, c32 = _c(16, w), _c(32, w)
            self.base = nn.Sequential(
                bn_conv(3, c16, 3),
                nn.ReLU(),
                bn_conv(c16, c16, 3),
                nn.ReLU(),
                bn_conv(c16, c32, 3),
                nn.ReLU(),
            )
            c64, c128, c256, c512 = (_c(n, w) for n in (64, 128, 256, 512))
            self.trees = nn.Sequential(
                Tree(c32, c64, 1, 1),
                Tree(c64, c128, 2, 2),
                Tree(c128, c256, 2, 2),
                Tree(c256, c512, 1, 2),
            )
            self.fc = nn.Linear(c512, nc)

        def forward(self, x: Any) -> Any:
            out = self.trees(self.base(x))
            return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    # ---------------------------------------------------------------------------- ShuffleNetV2
    def shuffle(x: Any) -> Any:
        n, c, h, wd = x.shape
        return x.view(n, 2, c // 2, h, wd).transpose(1, 2).reshape(n, c, h, wd)

    class ShuffleBlock(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            half = c // 2
            self.body = nn.Sequential(
                bn_conv(half, half, 1),
                nn.ReLU(),
                bn_conv(half, half, 3, groups=half),
                bn_conv(half, half, 1),
                nn.ReLU(),
            )

        def forward(self, x: Any) -> Any:
            a, b = x.chunk(2, dim=1)
            return shuffle(torch.cat([a, self.body(b)], 1))

    class ShuffleDown(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            mid = cout // 2
            self.left = nn.Sequential(
                bn_conv(cin, cin, 3, 2, groups=cin), bn_conv(cin, mid, 1), nn.ReLU()
            )
            self.right = nn.Sequential(
                bn_conv(cin, mid, 1),
                nn.ReLU(),
                bn_conv(mid, mid, 3, 2, groups=mid),
                bn_conv(mid, mid, 1),
                nn.ReLU(),
            )

        def forward(self, x: Any) -> Any:
            return shuffle(torch.cat([self.left(x), self.right(x)], 1))

    class ShuffleNetV2(nn.Module):
        def __init__(self, w: float, nc: int) -> None:
            super().__init__()
            c = _c(24, w)
            layers: List[Any] = [bn_conv(3, c, 3), nn.ReLU()]
            for cout, n in ((116, 3), (232, 7), (464, 3)):
                cout = _c(cout, w, 2)
                layers.append(ShuffleDown(c, cout))
                layers += [ShuffleBlock(cout) for _ in range(n)]
                c = cout
            head = _c(1024, w)
            layers += [bn_conv(c, head, 1), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(head, nc)

        def forward(self, x: Any) -> Any:
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    _BUILDERS.update(
        {
            "lenet": LeNet,
            "mlp": mlp,
            "vgg11": lambda w, nc: vgg(vgg_cfg["vgg11"], w, nc),
            "vgg16": lambda w, nc: vgg(vgg_cfg["vgg16"], w, nc),
            "vgg19": lambda w, nc: vgg(vgg_cfg["vgg19"], w, nc),
            "resnet18": lambda w, nc: ResNet(BasicBlock, (2, 2, 2, 2), w, nc),
            "preactresnet18": lambda w, nc: ResNet(PreActBlock, (2, 2, 2, 2), w, nc),
            "senet18": lambda w, nc: ResNet(BasicBlock, (2, 2, 2, 2), w, nc, se=True),
            "mobilenet": MobileNet,
            "mobilenetv2": MobileNetV2,
            "efficientnetb0": EfficientNetB0,
            "densenet121": lambda w, nc: DenseNet((6, 12, 24, 16), w, nc),
            "googlenet": GoogLeNet,
            "resnext29_2x64d": lambda w, nc: ResNeXt29(2, 64, w, nc),
            "regnetx_200mf": RegNetX200MF,
            "dpn26": DPN26,
            "dla": SimpleDLA,
            "shufflenetv2": ShuffleNetV2,
        }
    )


_NAMES = (
    "densenet121",
    "dla",
    "dpn26",
    "efficientnetb0",
    "googlenet",
    "lenet",
    "mlp",
    "mobilenet",
    "mobilenetv2",
    "preactresnet18",
    "regnetx_200mf",
    "resnet18",
    "resnext29_2x64d",
    "senet18",
    "shufflenetv2",
    "vgg11",
    "vgg16",
    "vgg19",
)

_ALIASES = {
    "simpledla": "dla",
    "efficientnet-b0": "efficientnetb0",
    "efficientnet_b0": "efficientnetb0",
    "regnetx-200mf": "regnetx_200mf",
    "resnext29-2x64d": "resnext29_2x64d",
}


def names() -> List[str]:
    """Names accepted by :func:`create`, sorted (no torch import)."""
    return list(_NAMES)


def canonical(name: str) -> str:
    """The zoo name of ``name`` (case and a few spellings folded); ConfigError if unknown."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _NAMES:
        raise ConfigError(
            f"unknown model {name!r}; greenml.zoo has {', '.join(_NAMES)} "
            "(or pass your own nn.Module)"
        )
    return key


def create(name: str, width: float = 1.0, num_classes: int = 10) -> Any:
    """A fresh ``nn.Module`` for 3x32x32 inputs with ``num_classes`` outputs.

    ``width`` (> 0) scales every channel count; 1.0 gives the paper's model.
    """
    key = canonical(name)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and 0 < width <= 8):
        raise ConfigError(f"width={width!r}: give a channel multiplier in (0, 8], e.g. 0.25 or 1")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ConfigError(f"num_classes={num_classes!r}: give a positive integer, e.g. 10")
    _define()
    return _BUILDERS[key](float(width), num_classes)
