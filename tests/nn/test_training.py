"""Small end-to-end runs written as PyTorch code (`import tracetorch as torch`)."""
import numpy as np

import tracetorch as torch
import tracetorch.nn as nn
import tracetorch.nn.functional as F


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    centers = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = rng.integers(0, 3, n)
    points = centers[labels] + rng.standard_normal((n, 2)) * 0.6
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)


def _sgd_step(model, lr):
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    model.zero_grad()


def test_mlp_learns_with_a_hand_written_sgd_loop():
    torch.manual_seed(0)
    x, y = _blobs(256, 0)
    model = MLP()
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(60):
        loss = loss_fn(model(x), y)
        loss.backward()
        _sgd_step(model, 0.2)
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
    x_test, y_test = _blobs(200, 1)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9


def test_batchnorm_dropout_model_trains_and_evaluates():
    torch.manual_seed(1)
    x, y = _blobs(128, 2)
    model = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    first = None
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        _sgd_step(model, 0.1)
        first = first if first is not None else loss.item()
    assert loss.item() < first / 2
    assert int(model[1].num_batches_tracked) == 40
    model.eval()
    out1, out2 = model(x), model(x)
    np.testing.assert_array_equal(out1.detach().numpy(), out2.detach().numpy())   # eval: deterministic


def _bars(n, seed):
    """8x8 images holding one horizontal (class 0) or vertical (class 1) bar."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 1, 8, 8)) * 0.3
    labels = rng.integers(0, 2, n)
    where = rng.integers(1, 7, n)
    for i in range(n):
        if labels[i] == 0:
            images[i, 0, where[i], :] += 2.0
        else:
            images[i, 0, :, where[i]] += 2.0
    return torch.tensor(images, dtype=torch.float32), torch.tensor(labels)


def test_small_cnn_learns():
    torch.manual_seed(2)
    x, y = _bars(64, 3)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        _sgd_step(model, 0.5)
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3
