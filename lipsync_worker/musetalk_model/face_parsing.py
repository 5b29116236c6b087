"""The face-parsing network MuseTalk draws its blend masks with: BiSeNet on a ResNet18, trained on
CelebAMask-HQ's 19 classes (face-parse-bisent/79999_iter.pth), in plain torch.

Module and attribute names follow the checkpoint's keys, so the real weights load strictly. The
checkpoint holds the backbone too; MuseTalk also reads resnet18-5c106cde.pth, but only to
initialise the backbone it then overwrites, so that file is not needed here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from contracts.musetalk_weights import FACE_PARSING

from ..faces import Box

SIZE = 512                                   # the network's input, as MuseTalk feeds it
CLASSES = 19
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP = 1, 10, 11, 12, 13   # of CelebAMask-HQ's labels
# ImageNet's statistics, which the backbone was trained with.
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class ConvBNReLU(nn.Module):
    def __init__(self, inputs: int, outputs: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = None
        if inputs != outputs or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                                            nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs))


class Resnet18(nn.Module):
    """ResNet18 without its classifier: features at 1/8, 1/16 and 1/32 of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        eighth = self.layer2(self.layer1(x))
        sixteenth = self.layer3(eighth)
        return eighth, sixteenth, self.layer4(sixteenth)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinementModule(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(inputs, outputs)
        self.conv_atten = nn.Conv2d(outputs, outputs, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        return features * torch.sigmoid(self.bn_atten(self.conv_atten(_global_mean(features))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's 1/8 features, and the context brought up to 1/8."""
        eighth, sixteenth, thirtysecond = self.resnet(x)
        context = self.arm32(thirtysecond) + self.conv_avg(_global_mean(thirtysecond))
        context = self.conv_head32(F.interpolate(context, sixteenth.shape[2:], mode="nearest"))
        context = self.arm16(sixteenth) + context
        context = self.conv_head16(F.interpolate(context, eighth.shape[2:], mode="nearest"))
        return eighth, context


class FeatureFusionModule(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(inputs, outputs, kernel=1)
        self.conv1 = nn.Conv2d(outputs, outputs // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(outputs // 4, outputs, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_mean(features)))))
        return features * attention + features


class BiSeNetOutput(nn.Module):
    def __init__(self, inputs: int, middle: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(inputs, middle)
        self.conv_out = nn.Conv2d(middle, CLASSES, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256)
        # Auxiliary heads that only training used: in the checkpoint, so it loads strictly; never run.
        self.conv_out16 = BiSeNetOutput(128, 64)
        self.conv_out32 = BiSeNetOutput(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores, N x 19 x H x W, for N x 3 x H x W normalised RGB."""
        spatial, context = self.cp(x)
        scores = self.conv_out(self.ffm(spatial, context))
        return F.interpolate(scores, x.shape[2:], mode="bilinear", align_corners=True)


def weights_path(models_dir: Path) -> Path:
    return models_dir / FACE_PARSING / "79999_iter.pth"


def load(models_dir: Path, device: torch.device) -> BiSeNet:
    """The network with the checkpoint's weights, in fp32 (it is small, and MuseTalk runs it so).
    A checkpoint of another shape, or one that lacks weights, fails here (RuntimeError)."""
    state = torch.load(weights_path(models_dir), map_location="cpu", weights_only=True)
    net = BiSeNet()
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False)


def _square_of(frame: np.ndarray, square: Box) -> np.ndarray:
    """The frame's pixels in `square`, black where it reaches past the frame (as PIL crops)."""
    x1, y1, x2, y2 = square
    h, w = frame.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), frame.dtype)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    out[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1] = frame[cy1:cy2, cx1:cx2]
    return out


@torch.inference_mode()
def parse(net: BiSeNet, frame: np.ndarray, square: Box) -> np.ndarray:
    """The class of every pixel of the frame's `square` (BGR), as a SIZE x SIZE uint8 map. The
    square is scaled with PIL's bilinear filter, as MuseTalk scales it (OpenCV's differs when
    it shrinks)."""
    rgb = Image.fromarray(_square_of(frame, square)[..., ::-1]).resize((SIZE, SIZE), Image.BILINEAR)
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    device = next(net.parameters()).device
    scores = net(((x - MEAN) / STD)[None].to(device))
    return scores[0].argmax(0).to(torch.uint8).cpu().numpy()
