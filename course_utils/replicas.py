"""Exact replicas of the models in five public tutorials, to measure the course against them.

Each class keeps its tutorial's layers as published (shape comments give every layer's output),
and adds what the course's tools read: ``source`` (where it comes from), ``value_range`` (the
input scaling it was trained with), ``code_size`` where it does not depend on the image size,
and ``encode(x)``, the encoder's output: the code.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import check_positive


class _Replica(nn.Module):
    """A tutorial's autoencoder: ``encoder`` then ``decoder``, as published."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code of a batch of images: the encoder's output."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


class GeeksforGeeksAutoencoder(_Replica):
    """GeeksforGeeks, "Implement Convolutional Autoencoder in PyTorch with CUDA" (Flowers102 at 64x64).

    The code is an 8-channel map at a quarter of the image side: 2,048 values at 64x64, 512 at 32x32.
    """

    source = "GeeksforGeeks: Implement Convolutional Autoencoder in PyTorch with CUDA"
    value_range = (0.0, 1.0)

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),  # 3x64x64 => 16x64x64
            nn.MaxPool2d(2),  # 16x64x64 => 16x32x32
            nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),  # 16x32x32 => 8x32x32
            nn.MaxPool2d(2),  # 8x32x32 => 8x16x16 (the code: 2,048 values)
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # => 16x32x32
            nn.ConvTranspose2d(16, 3, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),  # => 3x64x64
        )


class PaperspaceAutoencoder(_Replica):
    """Paperspace blog, "Convolutional Autoencoders" (CIFAR-10 in [-1, 1], latent 200 or 1000)."""

    source = "Paperspace blog: Convolutional Autoencoders"
    value_range = (-1.0, 1.0)

    def __init__(self, latent: int = 200, channels: int = 16):
        super().__init__()
        check_positive("latent", latent)
        self.code_size = latent
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(),  # 3x32x32 => 16x32x32
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),  # 16x32x32 => 16x32x32
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.ReLU(),  # 16x32x32 => 32x16x16
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),  # 32x16x16 => 32x16x16
            nn.Conv2d(2 * c, 4 * c, 3, padding=1, stride=2), nn.ReLU(),  # 32x16x16 => 64x8x8
            nn.Conv2d(4 * c, 4 * c, 3, padding=1), nn.ReLU(),  # 64x8x8 => 64x8x8
            nn.Flatten(),  # 64x8x8 => 4096
            nn.Linear(4 * c * 8 * 8, latent), nn.ReLU(),  # 4096 => latent
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, 4 * c * 8 * 8), nn.ReLU(),  # latent => 4096
            nn.Unflatten(1, (4 * c, 8, 8)),  # 4096 => 64x8x8
            nn.ConvTranspose2d(4 * c, 4 * c, 3, padding=1), nn.ReLU(),  # 64x8x8 => 64x8x8
            nn.ConvTranspose2d(4 * c, 2 * c, 3, padding=1, stride=2, output_padding=1), nn.ReLU(),  # => 32x16x16
            nn.ConvTranspose2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),  # 32x16x16 => 32x16x16
            nn.ConvTranspose2d(2 * c, c, 3, padding=1, stride=2, output_padding=1), nn.ReLU(),  # => 16x32x32
            nn.ConvTranspose2d(c, c, 3, padding=1), nn.ReLU(),  # 16x32x32 => 16x32x32
            nn.ConvTranspose2d(c, 3, 3, padding=1),  # 16x32x32 => 3x32x32, no output activation
        )


class KapilshAutoencoder(_Replica):
    """kapilsh, "Convolutional Autoencoders" (Fashion-MNIST, a 4x7x7 = 196-value code)."""

    source = "kapilsh: Convolutional Autoencoders"
    code_size = 4 * 7 * 7
    value_range = (0.0, 1.0)

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),  # 1x28x28 => 16x28x28 (no activation, as published)
            nn.MaxPool2d(2),  # 16x28x28 => 16x14x14
            nn.Conv2d(16, 4, 3, padding=1),  # 16x14x14 => 4x14x14
            nn.MaxPool2d(2),  # 4x14x14 => 4x7x7
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4, 16, 2, stride=2), nn.ReLU(),  # 4x7x7 => 16x14x14
            nn.ConvTranspose2d(16, 1, 2, stride=2), nn.Sigmoid(),  # 16x14x14 => 1x28x28
        )


class AnothertechsAutoencoder(_Replica):
    """anothertechs, "AutoEncoder Neural Network in PyTorch" (STL10 resized to 32x32; 263M parameters)."""

    source = "anothertechs: AutoEncoder Neural Network in PyTorch"
    code_size = 100
    value_range = (0.0, 1.0)

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(16),  # 3x32x32 => 16x32x32
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(32),  # => 32x32x32
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(64),  # => 64x32x32
            nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(128),  # => 128x32x32
            nn.Flatten(),  # 128x32x32 => 131,072
            nn.Linear(32 * 32 * 128, 1000), nn.ReLU(),  # 131,072 => 1000 (131M weights)
            nn.Linear(1000, 100),  # 1000 => 100, the code
        )
        self.decoder = nn.Sequential(
            nn.Linear(100, 1000), nn.ReLU(),  # 100 => 1000
            nn.Linear(1000, 32 * 32 * 128), nn.ReLU(),  # 1000 => 131,072
            nn.Unflatten(1, (128, 32, 32)),  # => 128x32x32
            nn.ConvTranspose2d(128, 64, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(64),  # => 64x32x32
            nn.ConvTranspose2d(64, 32, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(32),  # => 32x32x32
            nn.ConvTranspose2d(32, 16, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(16),  # => 16x32x32
            nn.ConvTranspose2d(16, 3, 5, padding=2), nn.Sigmoid(),  # => 3x32x32
        )


class UvATutorial9Autoencoder(_Replica):
    """UvA Deep Learning, tutorial 9, "Deep Autoencoders" (CIFAR-10 in [-1, 1], GELU, latent 64 to 384).

    The benchmarks build it to compare its training compute with the course recipe's.
    """

    source = "UvA Deep Learning Course: Tutorial 9, Deep Autoencoders"
    value_range = (-1.0, 1.0)

    def __init__(self, latent: int, c: int = 32):
        super().__init__()
        check_positive("latent", latent)
        self.code_size = latent
        act = nn.GELU
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1, stride=2), act(),  # 32x32 => 16x16
            nn.Conv2d(c, c, 3, padding=1), act(),  # 16x16 => 16x16
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), act(),  # 16x16 => 8x8
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), act(),  # 8x8 => 8x8
            nn.Conv2d(2 * c, 2 * c, 3, padding=1, stride=2), act(),  # 8x8 => 4x4
            nn.Flatten(), nn.Linear(2 * 16 * c, latent))  # 2c x 4 x 4 => latent
        self.decoder = nn.Sequential(
            nn.Linear(latent, 2 * 16 * c), act(), nn.Unflatten(1, (2 * c, 4, 4)),  # latent => 2c x 4 x 4
            nn.ConvTranspose2d(2 * c, 2 * c, 3, output_padding=1, padding=1, stride=2), act(),  # 4x4 => 8x8
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), act(),  # 8x8 => 8x8
            nn.ConvTranspose2d(2 * c, c, 3, output_padding=1, padding=1, stride=2), act(),  # 8x8 => 16x16
            nn.Conv2d(c, c, 3, padding=1), act(),  # 16x16 => 16x16
            nn.ConvTranspose2d(c, 3, 3, output_padding=1, padding=1, stride=2), nn.Tanh())  # 16x16 => 32x32
