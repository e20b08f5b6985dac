"""CIFAR-style model zoo (32x32 inputs): ResNets, wide ResNets, VGG, MobileNetV2, ShuffleNetV2.

Layouts follow the usual knowledge-distillation benchmarks (CRD / RepDistiller): CIFAR
ResNets of depth 6n+2 (``resnet8x4`` / ``resnet32x4`` are the 4x wider variants), WRN-d-k,
VGG with BatchNorm, and CIFAR versions of MobileNetV2 and ShuffleNetV2 (no early
downsampling). All models end in adaptive average pooling, so other input sizes work too;
``input_shape[0]`` sets the number of input channels.
"""

from __future__ import annotations

import torch
from torch import nn

from joryu.models.registry import register


def _in_channels(in_channels, input_shape, default: int = 3) -> int:
    if in_channels is not None:
        return int(in_channels)
    if input_shape is None:
        return default
    if len(input_shape) != 3:
        raise ValueError(f"expected input_shape (C, H, W), got {tuple(input_shape)}")
    return int(input_shape[0])


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- CIFAR ResNet


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3-BN-ReLU-conv3-BN plus shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: stem conv3, three stages of basic blocks, depth = 6n + 2."""

    def __init__(self, depth: int = 20, widths=(16, 32, 64), stem: int = 16,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 3:
            raise ValueError(f"widths must list three stage widths, got {widths}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        c = stem
        stages = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.feature_layers = ["layer1", "layer2", "layer3"]
        _init_weights(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _resnet_factory(name: str, depth: int, widths, stem: int, doc: str):
    def factory(num_classes: int = 10, input_shape=None, in_channels: int | None = None):
        return CifarResNet(depth, widths, stem, num_classes, _in_channels(in_channels, input_shape))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return register(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    globals()[f"resnet{_depth}"] = _resnet_factory(
        f"resnet{_depth}", _depth, (16, 32, 64), 16,
        f"CIFAR ResNet-{_depth} (basic blocks, widths 16/32/64).",
    )
for _depth in (8, 32):
    globals()[f"resnet{_depth}x4"] = _resnet_factory(
        f"resnet{_depth}x4", _depth, (64, 128, 256), 32,
        f"CIFAR ResNet-{_depth}x4 (stem 32, widths 64/128/256).",
    )
del _depth


# --------------------------------------------------------------------------- Wide ResNet


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3-BN-ReLU-(dropout)-conv3 plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = stride == 1 and cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # the projection sees the activated input, the identity the raw one
        return out + (x if self.equal else self.shortcut(a))


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv3(16), three groups of (depth-4)/6 pre-activation blocks."""

    def __init__(self, depth: int = 16, widen_factor: int = 2, dropout: float = 0.0,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        c = 16
        groups = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(c, w, 2 if (i > 0 and j == 0) else 1, dropout))
                c = w
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.feature_layers = ["block1", "block2", "block3"]
        _init_weights(self)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


@register("wrn")
def wrn(depth: int = 16, widen_factor: int = 2, dropout: float = 0.0, num_classes: int = 10,
        input_shape=None, in_channels: int | None = None):
    """Wide ResNet WRN-depth-widen_factor (pre-activation, widths 16k/32k/64k)."""
    return WideResNet(depth, widen_factor, dropout, num_classes,
                      _in_channels(in_channels, input_shape))


def _wrn_factory(depth: int, k: int):
    name = f"wrn_{depth}_{k}"

    def factory(num_classes: int = 10, input_shape=None, in_channels: int | None = None,
                dropout: float = 0.0):
        return wrn(depth, k, dropout, num_classes, input_shape, in_channels)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Wide ResNet WRN-{depth}-{k} (pre-activation, widths {16 * k}/{32 * k}/{64 * k})."
    return register(name)(factory)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2), (28, 10)):
    globals()[f"wrn_{_depth}_{_k}"] = _wrn_factory(_depth, _k)
del _depth, _k


# --------------------------------------------------------------------------- VGG

VGG_CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGG(nn.Module):
    """VGG with BatchNorm for CIFAR: five conv stages; max-pool after the first four
    (32 -> 2), adaptive average pool after the last, then one linear layer. The max pools round
    up (ceil mode: the same sizes on even inputs), so inputs down to 14 pixels fit (14 -> 1)."""

    def __init__(self, cfg, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        c = in_channels
        for i, stage in enumerate(cfg):
            layers: list[nn.Module] = []
            for w in stage:
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                c = w
            setattr(self, f"block{i}", nn.Sequential(*layers))
            last = i == len(cfg) - 1
            setattr(self, f"pool{i}", nn.AdaptiveAvgPool2d(1) if last else nn.MaxPool2d(2, ceil_mode=True))
        self.num_stages = len(cfg)
        self.fc = nn.Linear(c, num_classes)
        self.feature_layers = [f"block{i}" for i in range(len(cfg))]
        _init_weights(self)

    def forward(self, x):
        for i in range(self.num_stages):
            x = getattr(self, f"pool{i}")(getattr(self, f"block{i}")(x))
        return self.fc(x.flatten(1))


def _vgg_factory(name: str):
    cfg = VGG_CFGS[name]

    def factory(num_classes: int = 10, input_shape=None, in_channels: int | None = None):
        return VGG(cfg, num_classes, _in_channels(in_channels, input_shape))

    convs = sum(len(s) for s in cfg)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (f"{name.upper()} with BatchNorm for CIFAR ({convs} conv layers in 5 stages, "
                       "linear head).")
    return register(name)(factory)


for _name in VGG_CFGS:
    globals()[_name] = _vgg_factory(_name)
del _name


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand - 3x3 depthwise - 1x1 linear projection (+ identity)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR: stem and the first two stages at stride 1 (32 -> 4 overall)."""

    # expansion t, channels c, repeats n, stride s (first two strides 1 for 32x32 inputs)
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3):
        super().__init__()
        c = _make_divisible(32 * width_mult)
        self.stem = _conv_bn(in_channels, c, 3, 1)
        stages = []
        for t, ch, n, s in self.SETTING:
            out = _make_divisible(ch * width_mult)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(c, out, s if j == 0 else 1, t))
                c = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.last_channels = _make_divisible(1280 * max(1.0, width_mult))
        self.conv_last = _conv_bn(c, self.last_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.last_channels, num_classes)
        # stage outputs at 32x32, 16x16, 8x8 and 4x4 (for 32x32 inputs)
        self.feature_layers = ["stages.1", "stages.2", "stages.4", "stages.6"]
        _init_weights(self)

    def forward(self, x):
        x = self.conv_last(self.stages(self.stem(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, input_shape=None, in_channels: int | None = None,
                width_mult: float = 1.0):
    """MobileNetV2 for 32x32 images (inverted residuals; `width_mult` scales the widths)."""
    return MobileNetV2(num_classes, width_mult, _in_channels(in_channels, input_shape))


# --------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split channels, transform one half, concat, shuffle.
    Stride 2: both branches see the whole input and downsample; the outputs are concatenated."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 1:
            if cin != cout or cout % 2:
                raise ValueError("a stride-1 shuffle unit needs cin == cout, even")
            self.left = nn.Identity()
            branch_in = half
        else:
            self.left = nn.Sequential(
                _conv_bn(cin, cin, 3, stride, groups=cin, act=False),
                _conv_bn(cin, cout - half, 1),
            )
            branch_in = cin
        self.right = nn.Sequential(
            _conv_bn(branch_in, half, 1),
            _conv_bn(half, half, 3, stride, groups=half, act=False),
            _conv_bn(half, half, 1),
        )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return channel_shuffle(out, 2)


SHUFFLENETV2_CFGS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for CIFAR: 3x3 stem at stride 1 (no max-pool), stages of 4/8/4 units."""

    REPEATS = (4, 8, 4)

    def __init__(self, num_classes: int = 10, net_size: float = 1.0, in_channels: int = 3):
        super().__init__()
        key = float(net_size)
        if key not in SHUFFLENETV2_CFGS:
            raise ValueError(f"net_size must be one of {sorted(SHUFFLENETV2_CFGS)}, got {net_size}")
        *widths, last = SHUFFLENETV2_CFGS[key]
        self.stem = _conv_bn(in_channels, 24, 3, 1)
        c = 24
        stages = []
        for w, n in zip(widths, self.REPEATS):
            units = [ShuffleUnit(c, w, 2)] + [ShuffleUnit(w, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            c = w
        self.stage2, self.stage3, self.stage4 = stages
        self.conv_last = _conv_bn(c, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        self.feature_layers = ["stage2", "stage3", "stage4"]
        _init_weights(self)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.fc(self.avgpool(self.conv_last(x)).flatten(1))


@register("shufflenetv2")
def shufflenetv2(num_classes: int = 10, input_shape=None, in_channels: int | None = None,
                 net_size: float = 1.0):
    """ShuffleNetV2 for 32x32 images (`net_size` 0.5, 1, 1.5 or 2)."""
    return ShuffleNetV2(num_classes, net_size, _in_channels(in_channels, input_shape))
