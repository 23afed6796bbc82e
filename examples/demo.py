"""Train the residual MLP of the design notes on Fashion-MNIST with a compiled step.

    python examples/demo.py [--epochs 3] [--eager] [--backend auto] [--out demo_out]

Prints test accuracy and epoch time each epoch, writes per-epoch metrics to
`<out>/metrics.json` and a learning curve to `<out>/learning_curve.png`
(when matplotlib is installed), then prints the compiler's fusion report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tracetorch as tt  # noqa: E402
import tracetorch.nn.functional as F  # noqa: E402
from tracetorch.data.datasets import FashionMNIST  # noqa: E402
from tracetorch.utils.data import DataLoader, TensorDataset  # noqa: E402
from examples.models import MLPResNet  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:          # the progress bar is a nicety, not a requirement
    def tqdm(it, **_):
        return it


def load(train: bool):
    images, labels = FashionMNIST(train=train).arrays()
    x = tt.from_numpy(images.reshape(len(images), -1)).float() / 255.0
    return TensorDataset(x, tt.from_numpy(labels.astype("int64")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--eager", action="store_true", help="do not compile the training step")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    tt.manual_seed(args.seed)
    train_set, test_set = load(True), load(False)
    model = MLPResNet()
    opt = tt.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def eval_step(x, y):
        return (model(x).argmax(1) == y).sum()

    compiled = not args.eager and hasattr(tt, "compile")
    if compiled:
        train_step = tt.compile(train_step, backend=args.backend)
        eval_step = tt.compile(eval_step, backend=args.backend)

    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=tt.Generator().manual_seed(args.seed))
    test_loader = DataLoader(test_set, batch_size=1000)
    # lr anneals to 0 over the run: steadier final accuracy, and it changes every step without recompiling
    sched = tt.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(loader))
    metrics = []
    print(f"tracetorch {tt.__version__}: MLPResNet on Fashion-MNIST, {'compiled (' + args.backend + ')' if compiled else 'eager'}")
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, n = 0.0, 0
        for x, y in tqdm(loader, desc=f"epoch {epoch}", leave=False, mininterval=0.5):
            total += train_step(x, y).item()
            sched.step()
            n += 1
        seconds = time.perf_counter() - t0
        model.eval()
        with tt.no_grad():
            correct = sum(int(eval_step(x, y)) for x, y in test_loader)
        acc = correct / len(test_set)
        m = {"epoch": epoch, "train_loss": total / n, "test_accuracy": acc, "epoch_seconds": seconds,
             "samples_per_second": n * args.batch_size / seconds}
        metrics.append(m)
        print(f"epoch {epoch}: loss {m['train_loss']:.4f}  test accuracy {acc:.2%}  "
              f"{seconds:.2f} s ({m['samples_per_second']:.0f} samples/s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    _plot(metrics, os.path.join(args.out, "learning_curve.png"))
    if compiled and hasattr(train_step, "explain"):
        model.train()
        x, y = next(iter(loader))
        print("\nFusion report of the compiled training step:")
        print(fusion_summary(train_step.explain(x, y)))
        stats = train_step.stats()
        print(f"  calls {stats['calls']}, traces {stats['traces']}, cache hits {stats['cache_hits']}, "
              f"guard failures {sum(stats['guard_failures'].values())}  (full report: train_step.explain(x, y))")
    return metrics


def fusion_summary(explain_text: str, groups: int = 12) -> str:
    """The headline of `.explain()`: op and kernel counts, memory plan, and the first fusion groups."""
    lines = explain_text.splitlines()
    keep = [ln for ln in lines if ln.startswith("traced ")]
    if "-- backend --" in lines:
        for ln in lines[lines.index("-- backend --") + 1:]:
            if ln.startswith("fusion groups"):
                break
            keep.append(ln)
    names = [ln.split(" [")[0].strip() + " [" + ln.split(" [", 1)[1].split("]")[0] + "]]"
             for ln in lines if ln.startswith("  k") and " [" in ln]
    if names:
        keep.append(f"first fusion groups ({len(names)} in all):")
        keep += ["  " + n for n in names[:groups]]
    return "\n".join("  " + ln for ln in keep)


def _plot(metrics, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no learning curve PNG)")
        return
    epochs = [m["epoch"] for m in metrics]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(epochs, [m["train_loss"] for m in metrics], "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [100 * m["test_accuracy"] for m in metrics], "s-", color="tab:red", label="test accuracy")
    ax2.set_ylabel("test accuracy (%)", color="tab:red")
    ax1.set_title("MLPResNet on Fashion-MNIST (tracetorch)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"learning curve: {path}")


if __name__ == "__main__":
    main()
