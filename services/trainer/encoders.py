"""Small CNN encoder family that the bound engine supports: normalization, Conv+ReLU, Flatten, MLP;
plain layers (trained with the spectral penalty) or AOL layers (1-Lipschitz by construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from services.trainer.aol import LAYER_KINDS, make_aol

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a ``ConvEncoder``; every conv is 3x3 with padding 1 and the given stride."""

    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (1, 2, 2)
    hidden_dim: int = 256
    feature_dim: int = 128
    batch_norm: bool = False
    mean: float = FMNIST_MEAN
    std: float = FMNIST_STD
    layers: str = "plain"  # "aol" / "aol-narrow": each conv / dense layer 1-Lipschitz by construction
    # "maxmin": pairs channel i with i + C/2 -> (max, min); 1-Lipschitz, norm-preserving
    activation: str = "relu"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides):
            raise ValueError(f"channels {self.channels} and strides {self.strides} differ in length")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.layers not in LAYER_KINDS:
            raise ValueError(f"layers must be one of {LAYER_KINDS}, got {self.layers!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "maxmin" and any(c % 2 for c in (*self.channels, self.hidden_dim)):
            raise ValueError("maxmin pairs channels: every conv width and hidden_dim must be even")
        if self.layers != "plain" and self.batch_norm:
            raise ValueError("AOL layers are 1-Lipschitz only without BatchNorm: drop batch_norm")

    def to_dict(self) -> dict:
        """Return a JSON-serializable description."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        """Rebuild a config written by ``to_dict``."""
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        d["strides"] = tuple(d["strides"])
        return cls(**d)

    def spatial_sizes(self) -> list[int]:
        """Input height (= width) of each conv layer, then the final map size."""
        sizes = [self.image_size]
        for s in self.strides:
            sizes.append((sizes[-1] + 2 - 3) // s + 1)
        return sizes


class Normalize(nn.Module):
    """``(x - mean) / std`` with scalar constants; exported as Sub and Div."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


ACTIVATIONS = ("relu", "maxmin")


class MaxMin(nn.Module):
    """x [B, C, ...] -> [max(a, b), min(a, b)] with (a, b) = the two halves of dim 1: a sort of each
    pair, 1-Lipschitz and gradient-norm preserving (Anil et al., 2019), unlike ReLU, which discards half
    the signal."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"MaxMin pairs channels: got an odd count {channels}")
        self.half = channels // 2  # a Python int: exports as Slice with constant bounds, not Shape arithmetic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : self.half], x[:, self.half : 2 * self.half]
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def _activation(name: str, channels: int) -> nn.Module:
    return MaxMin(channels) if name == "maxmin" else nn.ReLU()


class ConvEncoder(nn.Module):
    """images [B, C, H, W] float32 in [0, 1] -> features [B, feature_dim]."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [Normalize(config.mean, config.std)]
        # AOL layers shrink the signal (the first dense layer's Gram is [in, in] with in = C·H·W), and learned
        # biases then dominate it: measured, a distilled AOL student with biases collapsed to a near-constant
        # output (cosine distance to the teacher stuck at 0.50); without them it reached 0.18 in 240 steps
        biased = config.layers == "plain"
        c_in = config.in_channels
        for c_out, stride in zip(config.channels, config.strides, strict=False):
            bias = biased and not config.batch_norm
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(_activation(config.activation, c_out))
            c_in = c_out
        side = config.spatial_sizes()[-1]
        layers += [
            nn.Flatten(),
            nn.Linear(c_in * side * side, config.hidden_dim, bias=biased),
            _activation(config.activation, config.hidden_dim),
            nn.Linear(config.hidden_dim, config.feature_dim, bias=biased),
        ]
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # He init keeps the signal's scale through ReLU layers; PyTorch's default shrinks it
                # per layer, which leaves an untrained encoder's features nearly collinear (slow MoCo start).
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if config.layers != "plain":
            make_aol(self.net, config.layers)  # the product of the layer norms is then at most 1 / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def linear_layers(self) -> list[nn.Module]:
        """The encoder's Normalize, Conv2d, BatchNorm2d and Linear layers in forward order."""
        kinds = (Normalize, nn.Conv2d, nn.BatchNorm2d, nn.Linear)
        return [m for m in self.net if isinstance(m, kinds)]


def build_encoder(config: EncoderConfig) -> ConvEncoder:
    """Construct an encoder from its config."""
    return ConvEncoder(config)


def untrained_encoder(config: EncoderConfig = EncoderConfig(), seed: int = 0) -> ConvEncoder:
    """A freshly initialized encoder (eval mode) drawn from torch's generator seeded with ``seed``; the
    global generator's state is left as it was. The benches and the reliability stand-in serve these."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(config).eval()
