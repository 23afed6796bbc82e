"""The demo's MLPResNet learns real Fashion-MNIST within the suite's time budget.

One pass over 12,000 training images (120 Adam steps at batch 100) takes
about a second. Measured with seeds 0-4 (eager, this code): test accuracy on
the first 2,000 test images was 78.3-82.8% (chance: 10%), and the mean loss
of the last 10 steps was 0.27-0.30 of the first 10's. We require >= 72% and
a halved loss: far above chance, with room for the spread across seeds
(dropout masks, batch order) and platforms. The compiled step must
follow the eager one (same seed, same batches): its first losses equal the
eager ones to float32 rounding and it reaches the same accuracy.
"""
from __future__ import annotations

import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch.data import datasets
from tracetorch.utils.data import DataLoader, TensorDataset

try:
    datasets.locate_fashion_mnist()
    HAVE_DATA = True
except FileNotFoundError:
    HAVE_DATA = False

pytestmark = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not found: run `make data`")

TRAIN, TEST, BATCH = 12_000, 2_000, 100


def _tensors(train: bool, n: int):
    images, labels = datasets.FashionMNIST(train=train).arrays()
    x = tt.from_numpy(images[:n].reshape(n, -1)).float() / 255.0
    return x, tt.from_numpy(labels[:n].astype("int64"))


def _train(seed: int, compile_step: bool):
    from examples.models import MLPResNet
    tt.manual_seed(seed)
    model = MLPResNet()
    opt = tt.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compile_step:
        step = tt.compile(step)
    loader = DataLoader(TensorDataset(*_tensors(True, TRAIN)), batch_size=BATCH, shuffle=True,
                        generator=tt.Generator().manual_seed(seed))
    losses = [step(x, y).item() for x, y in loader]
    model.eval()
    x, y = _tensors(False, TEST)
    with tt.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return losses, accuracy, step


def test_mlpresnet_learns_fashion_mnist_eagerly():
    losses, accuracy, _ = _train(0, compile_step=False)
    assert accuracy >= 0.72, accuracy
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_compiled_training_follows_eager():
    eager_losses, eager_acc, _ = _train(1, compile_step=False)
    losses, accuracy, step = _train(1, compile_step=True)
    assert step.stats()["cache_hits"] >= len(losses) - 3
    # compiled reductions sum in another order: equal to float32 rounding at first, then Adam
    # amplifies the rounding differences (about 2% apart after 100 steps; on a Zen 3 host with
    # OpenBLAS they grew from 1e-7 to 2e-5 between steps 50 and 55), so later steps are compared
    # statistically: the compiled run is then another sample of the same training, and its accuracy
    # may differ from eager's by as much as seeds do (4.5 points; 2.6 seen on that host)
    assert losses[:20] == pytest.approx(eager_losses[:20], rel=2e-3, abs=2e-4)
    assert sum(losses[-20:]) == pytest.approx(sum(eager_losses[-20:]), rel=0.05)
    assert accuracy == pytest.approx(eager_acc, abs=0.045)
    assert accuracy >= 0.72
