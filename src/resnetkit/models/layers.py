"""Layer helpers shared by every model: norm and activation factories, stochastic depth,
squeeze-and-excitation, patch whitening. Each factory accepts a string or a class, as in timm."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ConfigError

__all__ = [
    "ActSpec",
    "DropPath",
    "NormSpec",
    "PatchWhitening",
    "SqueezeExcite",
    "conv_nd",
    "make_act",
    "make_norm",
    "resolve_act",
    "resolve_norm",
]

NormSpec = str | Callable[[int], nn.Module]
ActSpec = str | Callable[[], nn.Module]

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "tanh": nn.Tanh,
}
NORM_NAMES = ("batch", "group", "layer", "none")


def conv_nd(dims: int) -> type[nn.Conv1d] | type[nn.Conv2d]:
    """The convolution class for 1-D or 2-D inputs."""
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in Wu & He (2018), fewer when the channel count does not divide.
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def resolve_norm(norm: NormSpec, dims: int = 2) -> Callable[[int], nn.Module]:
    """Turn ``norm`` (a name or a class) into ``channels -> module``.

    ``"layer"`` normalises over (C, *spatial) per sample, i.e. GroupNorm with one group, the
    usual meaning of layer norm for convolutional features.

    Raises:
        ConfigError: for an unknown name or a value that is neither a name nor callable.
    """
    if callable(norm):
        return norm
    if norm == "batch":
        return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    if norm == "group":
        return _group_norm
    if norm == "layer":
        return lambda c: nn.GroupNorm(1, c)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ConfigError(f"norm={norm!r} is not known; use one of {', '.join(NORM_NAMES)} or a class")


def resolve_act(act: ActSpec) -> Callable[[], nn.Module]:
    """Turn ``act`` (a name or a class) into a zero-argument module factory.

    Raises:
        ConfigError: for an unknown name.
    """
    if callable(act):
        return act
    if isinstance(act, str) and act in _ACTS:
        return _ACTS[act]
    raise ConfigError(f"act={act!r} is not known; use one of {', '.join(_ACTS)} or a class")


def make_norm(norm: NormSpec, channels: int, dims: int = 2) -> nn.Module:
    """Build one normalisation layer for ``channels`` channels."""
    return resolve_norm(norm, dims)(channels)


def make_act(act: ActSpec) -> nn.Module:
    """Build one activation module."""
    return resolve_act(act)()


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample.

    Surviving samples are scaled by ``1 / keep`` so the expectation is unchanged.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, 1, 1): one draw per sample
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) with timm's key names (``fc1``, ``fc2``)."""

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        act: ActSpec = "relu",
        dims: int = 2,
    ) -> None:
        super().__init__()
        # timm's make_divisible(channels * rd_ratio, 8): round to a multiple of 8, at least 8.
        reduced = max(8, int(channels * rd_ratio + 4) // 8 * 8)
        conv = conv_nd(dims)
        self.fc1 = conv(channels, reduced, kernel_size=1, bias=True)
        self.act = make_act(act)
        self.fc2 = conv(reduced, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, x.ndim))
        scale = x.mean(spatial, keepdim=True)  # (B, C, 1, 1)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * scale.sigmoid()


class PatchWhitening(nn.Module):
    """A fixed convolution that whitens the image's ``patch x patch`` patches (airbench's stem).

    Keller Jordan's CIFAR-10 speed records start with a conv whose filters are the
    eigenvectors of the training patches' covariance, each scaled by ``1 / sqrt(eigenvalue)``,
    and their negatives (so that a following activation keeps both signs): the first layer
    starts decorrelated and needs no training, and the next layer sees fewer, more useful
    channels. The filters are a buffer, set from data by :meth:`fit` (the trainer calls it
    before the first step) and saved in the state dict; only the bias is trained. The conv has
    no padding, so the output is ``patch - 1`` pixels smaller than the input.

    Args:
        in_chans: input channels.
        patch: patch size; the output has ``2 * in_chans * patch**2`` channels.
        eps: added to the eigenvalues, so that near-constant directions are not blown up.
    """

    weight: torch.Tensor

    def __init__(self, in_chans: int, patch: int = 2, eps: float = 1e-2) -> None:
        super().__init__()
        self.in_chans, self.patch, self.eps = in_chans, patch, eps
        self.out_chans = 2 * in_chans * patch * patch
        self.register_buffer("weight", torch.zeros(self.out_chans, in_chans, patch, patch))
        self.bias = nn.Parameter(torch.zeros(self.out_chans))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from normalised training images ``(B, in_chans, H, W)``."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ConfigError(
                f"patch whitening needs images (batch, {self.in_chans}, height, width), "
                f"got {tuple(images.shape)}"
            )
        k = self.patch
        # (B, C, H', W', k, k) -> one row per patch, in the conv weight's (C, k, k) order.
        patches = images.double().unfold(2, k, 1).unfold(3, k, 1)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.in_chans * k * k)
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / max(patches.shape[0] - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T / (eigenvalues.clamp(min=0) + self.eps).sqrt()[:, None]
        filters = filters.reshape(-1, self.in_chans, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_chans}, {self.out_chans}, patch={self.patch}, eps={self.eps}"
