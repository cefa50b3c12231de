"""The model, data and local training of the quickstart (as in Flower's quickstart-pytorch, minus downloads).

Flower's quickstart trains a small CNN on CIFAR-10 partitions downloaded by ``flwr-datasets``. Here the data
are synthetic 3x32x32 images (a class-specific pattern plus noise) made from a seed, so the example runs
offline; one BatchNorm layer adds an integer buffer (``num_batches_tracked``) to the state dict.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


class Net(nn.Module):
    """Flower quickstart's CNN (two convolutions, three linear layers) with a BatchNorm after conv1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def load_data(partition_id: int, num_partitions: int, n: int = 256) -> tuple[torch.Tensor, ...]:
    """Train and test tensors of one partition: ``n`` synthetic images, 80 % train, a skewed label mix."""
    patterns = torch.randn(NUM_CLASSES, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1 + partition_id)
    weights = torch.ones(NUM_CLASSES)
    weights[partition_id % NUM_CLASSES] = 4.0  # each partition sees more of one class
    y = torch.multinomial(weights, n, replacement=True, generator=g)
    x = patterns[y] + torch.randn(n, 3, 32, 32, generator=g)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train(net: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """Local SGD epochs; returns the mean training loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[i : i + 32]), y[i : i + 32])
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
    return total / steps


def test(net: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy on ``(x, y)``."""
    net.eval()
    with torch.no_grad():
        out = net(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
