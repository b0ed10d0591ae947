"""``greenml demo``: a small PyTorch training and inference run, measured and reported.

The data set is *generated* (no download): ten classes of 8x8 greyscale patterns, each a fixed
random template plus noise and a random one-pixel shift, so a small CNN learns it in seconds.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Optional

from ._records import read_records
from ._report import describe_result, format_rows, plot_run, summary_rows


def _progress(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the demo extra
        return it
    return tqdm(it, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def make_data(n: int, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(1234)  # the templates are the same for every split
    templates = (torch.rand(10, 10, 10, generator=g) > 0.6).float()
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    x = torch.empty(n, 1, 8, 8)
    for i in range(n):
        x[i, 0] = templates[y[i], dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
    x += 0.35 * torch.randn(x.shape, generator=g)
    return x, y


def make_model() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def run_demo(out_dir: str, quick: bool = False, runtime: Optional[Any] = None) -> int:
    """Trains, evaluates, measures and reports. Returns a process exit code."""
    try:
        import torch
    except ImportError:
        print(
            "greenml demo trains a small PyTorch model: install PyTorch first, e.g. "
            "`pip install 'greenml[demo]'` (or `pip install torch`)",
            file=sys.stderr,
        )
        return 2
    import greenml

    os.makedirs(out_dir, exist_ok=True)
    log = os.path.join(out_dir, "greenml-demo.jsonl")
    trace = os.path.join(out_dir, "greenml-demo-trace.csv")
    png = os.path.join(out_dir, "greenml-demo.png")
    if os.path.exists(log):
        os.remove(log)

    print("greenml demo: what this machine can measure", file=sys.stderr)
    for s in runtime.sensors() if runtime is not None else greenml.sensors():
        state = ("measured" if s.measured else "ESTIMATED") if s.available else "unavailable"
        print(f"  {s.domain:<14} {s.source:<6} {state}", file=sys.stderr)

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    n_train, n_test = (2000, 1000) if quick else (12000, 4000)
    epochs = 1 if quick else 3
    x_train, y_train = make_data(n_train, seed=1)
    x_test, y_test = make_data(n_test, seed=2)
    print(
        f"data: generated 8x8 patterns, 10 classes ({n_train} train / {n_test} test samples; "
        "synthetic, no download)",
        file=sys.stderr,
    )
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = 64
    steps_per_epoch = (n_train + batch - 1) // batch

    kwargs = {"runtime": runtime} if runtime is not None else {}
    with greenml.meter("demo", log=log, trace=trace, **kwargs) as m:
        with m.phase("train"):
            model.train()
            for epoch in range(epochs):
                perm = torch.randperm(n_train)
                for i in _progress(
                    range(steps_per_epoch), steps_per_epoch, f"train {epoch + 1}/{epochs}"
                ):
                    idx = perm[i * batch : (i + 1) * batch]
                    opt.zero_grad()
                    loss = loss_fn(model(x_train[idx]), y_train[idx])
                    loss.backward()
                    opt.step()
                    m.step()
        with m.phase("inference", items=n_test):
            model.eval()
            correct = 0
            with torch.no_grad():
                for i in _progress(range(0, n_test, 256), (n_test + 255) // 256, "inference"):
                    pred = model(x_test[i : i + 256]).argmax(dim=1)
                    correct += int((pred == y_test[i : i + 256]).sum())
    accuracy = correct / n_test

    result = m.to_dict()
    print()
    print(describe_result(result, title="greenml demo"))
    print(f"  test accuracy: {accuracy:.1%}")
    phases = m.phases
    train, infer = phases["train"], phases["inference"]
    steps = m.steps
    print()
    print("per phase:")
    print(format_rows(summary_rows(read_records(log))))
    if train.energy_j == train.energy_j:  # not NaN
        print()
        print(
            f"energy per training step: {steps.mean_j:.4g} J (p50 {steps.percentile_j(50):.4g}, "
            f"p99 {steps.percentile_j(99):.4g}; {steps.count} steps)"
        )
        print(f"energy per inferred sample: {infer.energy_per_item_j:.4g} J")
        from ._forecast import ForecastError

        try:  # 10x more epochs, forecast from the steps measured (warm-up excluded, interval)
            f = m.forecast(epochs=10 * epochs, steps_per_epoch=steps_per_epoch)
            print(f"10x longer training, {f.describe()}")
        except ForecastError as exc:
            print(f"no forecast of a 10x longer training: {exc}")
    else:
        print()
        print(
            "No energy numbers: nothing can be measured or estimated on this machine. "
            "Run `greenml sensors` for the reasons; on a machine without RAPL or an NVIDIA GPU, "
            "set GREENML_CPU_TDP_W=<watts> to get a TDP x utilisation estimate."
        )
    estimated = [d for d, ok in m.measured.items() if not ok]
    if estimated:
        print(f"note: {', '.join(estimated)} estimated from a model, not measured by a counter")
    plot_run(
        m.to_dataframe(), png, spans=m.phase_spans_s(), title="greenml demo", estimated=estimated
    )
    print(f"\nwrote {log}, {trace} and {png}")
    return 0
