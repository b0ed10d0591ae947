"""``greenml.study.run``: the sweep, one meter per cell, written to ``results.csv`` as it goes."""

from __future__ import annotations

import copy
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .._errors import ConfigError, GreenmlError
from . import COLUMNS, DOMAIN_PREFIX, PHASES, domain_column
from ._data import CIFAR10, SYNTHETIC, USER, Batches, load_cifar10, synthetic_cifar

# A unit of work is one (model, batch size, repetition): its train phase, then its inference
# phase on the trained model; each phase is one cell (one row).
KEY = ("model", "width", "batch_size", "phase", "repetition", "steps", "device", "dataset")

ModelSpec = Union[str, Any]


def _positive_int(value: Any, option: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{option}={value!r}: give a positive whole number, e.g. {example}")
    return value


def _model_specs(
    models: Any, width: float, num_classes: int
) -> List[Tuple[str, Callable[[], Any]]]:
    """``[(name, factory)]`` from zoo names, modules, factories or a name -> any mapping."""
    from .. import zoo

    if isinstance(models, str):
        models = [m for m in models.split(",") if m.strip()]
    items: List[Tuple[Optional[str], Any]]
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = [(None, m) for m in models]
    if not items:
        raise ConfigError(
            f"models is empty; give zoo names ({', '.join(zoo.names())}) or nn.Modules"
        )
    specs: List[Tuple[str, Callable[[], Any]]] = []
    import torch

    for name, m in items:
        if isinstance(m, str):
            key = zoo.canonical(m)
            specs.append(
                (name or key, lambda key=key: zoo.create(key, width=width, num_classes=num_classes))
            )
        elif isinstance(m, torch.nn.Module):
            initial = copy.deepcopy(m)  # every cell starts from the same weights
            specs.append((name or type(m).__name__.lower(), lambda i=initial: copy.deepcopy(i)))
        elif callable(m):
            specs.append((name or getattr(m, "__name__", "model"), m))
        else:
            raise ConfigError(
                f"model {m!r}: give a zoo name, an nn.Module, or a function returning one"
            )
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names repeat ({names}); give each model once or a name mapping")
    return specs


def hardware_fingerprint(device: str) -> str:
    """``CPU model x logical CPUs`` and, on CUDA, the GPU name (no identifiers)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu} x{os.cpu_count() or 1}"
    if device.startswith("cuda"):
        import torch

        text += " | " + torch.cuda.get_device_name(torch.device(device))
    return text


def _resolve_device(device: str) -> str:
    import torch

    d = str(device).strip().lower()
    if d == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if d == "cuda":
        d = "cuda:0"
    if d == "cpu":
        return d
    if d.startswith("cuda:") and d[5:].isdigit():
        if not torch.cuda.is_available() or int(d[5:]) >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r}: no such CUDA device here; use --device cpu or auto"
            )
        return d
    raise ConfigError(f"device={device!r}: use auto, cpu, cuda or cuda:<index>")


def _data(
    data: Any, test_data: Any, cifar10_root: Optional[str], need: int, seed: int, nc: int
) -> Tuple[str, Any, Any]:
    """(dataset label, train source, test source) for :class:`Batches`."""
    if data is not None and cifar10_root is not None:
        raise ConfigError("give either data=... or cifar10_root=..., not both")
    if cifar10_root is not None:
        x_tr, y_tr, x_te, y_te = load_cifar10(cifar10_root)
        return CIFAR10, (x_tr, y_tr), (x_te, y_te)
    if data is not None:
        if test_data is None:
            import torch

            if isinstance(data, torch.utils.data.DataLoader):
                raise ConfigError(
                    "with a DataLoader as data, also give test_data= (the held-out set that "
                    "inference and accuracy run on)"
                )
            n = len(data)
            n_test = max(1, n // 5)
            g = torch.Generator().manual_seed(seed)
            train_part, test_part = torch.utils.data.random_split(
                data, [n - n_test, n_test], generator=g
            )
            return USER, train_part, test_part
        return USER, data, test_data
    n = max(512, min(need, 8192))
    return (
        SYNTHETIC,
        synthetic_cifar(n, seed=seed + 1, num_classes=nc),
        synthetic_cifar(max(256, min(need, 4096)), seed=seed + 2, num_classes=nc),
    )


def _read_existing(csv_path: str) -> Any:
    import pandas as pd

    if not os.path.exists(csv_path):
        return None
    try:
        df = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise GreenmlError(
            f"cannot read the earlier results {csv_path!r} ({exc}); move it away to start afresh"
        ) from None
    missing = [c for c in KEY if c not in df.columns]
    if missing:
        raise GreenmlError(
            f"{csv_path!r} is not a greenml study table (no {', '.join(missing)}); pick another "
            "--out directory"
        )
    return df


def _key(row: Mapping[str, Any]) -> Tuple[Any, ...]:
    return (
        str(row["model"]),
        round(float(row["width"]), 6),
        int(row["batch_size"]),
        str(row["phase"]),
        int(row["repetition"]),
        int(row["steps"]),
        str(row["device"]),
        str(row["dataset"]),
    )


def order_columns(columns: Iterable[str]) -> List[str]:
    """The schema's order: COLUMNS with ``energy_j_<domain>`` after ``energy_j``, extras last."""
    cols = list(columns)
    domains = sorted(c for c in cols if c.startswith(DOMAIN_PREFIX))
    ordered: List[str] = []
    for c in COLUMNS:
        if c in cols:
            ordered.append(c)
        if c == "energy_j":
            ordered += domains
    ordered += [c for c in cols if c not in ordered]
    return ordered


def _write(rows: List[Dict[str, Any]], out_dir: str, parquet: bool) -> Any:
    import pandas as pd

    df = pd.DataFrame(rows)
    df = df[order_columns(df.columns)]
    csv_path = os.path.join(out_dir, "results.csv")
    tmp = csv_path + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, csv_path)
    if parquet:
        try:
            df.to_parquet(os.path.join(out_dir, "results.parquet"), index=False)
        except ImportError:
            warnings.warn(
                "results.parquet not written: pandas needs pyarrow for Parquet "
                "(`pip install 'greenml[study]'`); results.csv holds the same table",
                stacklevel=3,
            )
    return df


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="study", file=sys.stderr, dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm ships with the study extra
                self.bar = None

    def update(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(
    models: Any = ("lenet", "mobilenetv2", "resnet18"),
    batch_sizes: Sequence[int] = (16, 64),
    *,
    steps: Optional[int] = 20,
    samples: Optional[int] = None,
    phases: Sequence[str] = PHASES,
    repetitions: int = 1,
    width: float = 1.0,
    num_classes: int = 10,
    data: Any = None,
    test_data: Any = None,
    cifar10_root: Optional[str] = None,
    device: str = "auto",
    out_dir: Optional[str] = None,
    warmup_steps: int = 1,
    idle_s: float = 0.0,
    lr: float = 0.05,
    seed: int = 0,
    resume: bool = True,
    parquet: bool = True,
    progress: bool = True,
    runtime: Any = None,
    threads: Optional[int] = None,
) -> Any:
    """Measures models x batch sizes x phases x repetitions; returns the results DataFrame.

    Each cell runs ``steps`` measured steps (or ``ceil(samples / batch_size)``) after
    ``warmup_steps`` unmeasured ones. For every model, batch size and repetition a fresh model
    (seeded by ``seed + repetition``) is trained (SGD with momentum, ``lr``), then run for
    inference on held-out data; accuracy is the fraction of those held-out predictions that
    are right (an inference-only study first evaluates an untrained model). ``models`` holds
    zoo names (see :func:`greenml.zoo.names`), ``nn.Module`` objects, functions returning one,
    or a mapping name -> any of those. ``data``/``test_data`` take a ``Dataset`` or a
    ``DataLoader`` (its own batch size then); ``cifar10_root`` reads CIFAR-10 from a local
    folder; by default a generated CIFAR-shaped set is used. ``idle_s`` > 0 measures an idle
    baseline first (adds ``idle_power_w`` and ``net_energy_j``). With ``out_dir``, the table is
    rewritten to ``results.csv`` after every unit (and ``results.parquet`` at the end), and a
    re-run with ``resume`` skips the cells already there. ``runtime`` is a
    :class:`greenml.Runtime` (default: the process-wide one). ``threads`` sets torch's
    intra-op threads for the study (1 is steadiest on a shared machine: oversubscribed
    threads stall). Columns: see :mod:`greenml.study`.
    """
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "greenml study trains PyTorch models: install PyTorch first, e.g. "
            "`pip install 'greenml[study]'`"
        ) from None
    from .._baseline import idle_baseline
    from .._meter import Meter
    from .._runtime import default_runtime
    from .._features import features

    if isinstance(batch_sizes, int):
        batch_sizes = [batch_sizes]
    batch_sizes = [_positive_int(b, "batch_sizes", "16,64") for b in batch_sizes]
    if not batch_sizes:
        raise ConfigError("batch_sizes is empty; give at least one, e.g. 16,64")
    if (steps is None) == (samples is None):
        raise ConfigError("give steps=N or samples=N (one of them), e.g. steps=20")
    if steps is not None:
        _positive_int(steps, "steps", "20")
    if samples is not None:
        _positive_int(samples, "samples", "2048")
    phases = [phases] if isinstance(phases, str) else list(phases)
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        raise ConfigError(f"phases={phases!r}: use train, inference or both")
    phases = [p for p in PHASES if p in phases]
    _positive_int(repetitions, "repetitions", "3")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"warmup_steps={warmup_steps!r}: give 0 or more, e.g. 1")
    if not (isinstance(idle_s, (int, float)) and math.isfinite(idle_s) and idle_s >= 0):
        raise ConfigError(f"idle_s={idle_s!r}: give idle seconds >= 0, e.g. 10 (0 = none)")
    if not (isinstance(width, (int, float)) and math.isfinite(width) and 0 < width <= 8):
        raise ConfigError(f"width={width!r}: give a channel multiplier in (0, 8], e.g. 0.25")

    specs = _model_specs(models, float(width), num_classes)
    dev = _resolve_device(device)
    loader_bs = getattr(data, "batch_size", None) if data is not None else None
    if isinstance(data, torch.utils.data.DataLoader):
        if list(batch_sizes) != [loader_bs]:
            raise ConfigError(
                f"data is a DataLoader with batch size {loader_bs}; set batch_sizes=[{loader_bs}] "
                "or pass the Dataset itself to sweep batch sizes"
            )
    steps_for = {
        b: (steps if steps is not None else max(1, math.ceil(samples / b)))  # type: ignore[operator]
        for b in batch_sizes
    }
    need = max((steps_for[b] + warmup_steps) * b for b in batch_sizes)
    dataset, train_src, test_src = _data(data, test_data, cifar10_root, need, seed, num_classes)

    if threads is not None:
        _positive_int(threads, "threads", "1")
    rt = runtime if runtime is not None else default_runtime()
    hardware = hardware_fingerprint(dev)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    # the sampler starts now, not inside the first cell's window
    start = getattr(rt, "ensure_started", None)
    if callable(start):
        start()
    load_start = _loadavg()

    csv_rows: List[Dict[str, Any]] = []
    done: set = set()
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        existing = _read_existing(os.path.join(out_dir, "results.csv")) if resume else None
        if existing is not None:
            csv_rows = existing.to_dict("records")
            done = {_key(r) for r in csv_rows}

    units = [
        (name, make, b, rep)
        for name, make in specs
        for b in batch_sizes
        for rep in range(repetitions)
    ]
    bar = _Progress(len(units), progress)
    baseline = None
    if idle_s > 0:
        bar.write(f"greenml study: measuring idle power for {idle_s:g} s ...")
        baseline = idle_baseline(float(idle_s), runtime=rt)

    feats: Dict[str, Dict[str, Any]] = {}
    new_rows: List[Dict[str, Any]] = []
    seen_warnings: set = set()
    sample_shape: Optional[Tuple[int, ...]] = None
    try:
        for name, make, bs, rep in units:
            n_steps = steps_for[bs]
            keys = {
                ph: (name, round(float(width), 6), bs, ph, rep, n_steps, dev, dataset)
                for ph in phases
            }
            if all(k in done for k in keys.values()):
                bar.update(f"{name} bs{bs} r{rep} (done before)")
                continue
            # a unit that finished only partly is measured again as a whole
            csv_rows = [r for r in csv_rows if _key(r) not in keys.values()]
            torch.manual_seed(seed + rep)
            model = make().to(dev)
            train_batches = iter(Batches(train_src, bs, seed=seed + 17 * rep + bs))
            test_batches = iter(Batches(test_src, bs, seed=seed + 31 * rep + bs, shuffle=False))
            if name not in feats:
                if sample_shape is None:
                    x0, _ = next(iter(Batches(test_src, 1, seed=0, shuffle=False)))
                    sample_shape = tuple(x0.shape[1:])
                feats[name] = features(model, sample_shape)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cells = _run_unit(
                    model,
                    phases,
                    train_batches,
                    test_batches,
                    n_steps,
                    warmup_steps,
                    lr,
                    dev,
                    rt,
                    baseline,
                    f"{name}-bs{bs}-r{rep}",
                    Meter,
                )
                # energies are resolved here, so their warnings are caught here too
                unit_rows = [
                    _row(
                        name,
                        float(width),
                        feats[name],
                        bs,
                        ph,
                        n_steps,
                        n_samples,
                        m,
                        accuracy,
                        rep,
                        dev,
                        hardware,
                        dataset,
                        threads,
                        baseline,
                    )
                    for ph, (m, n_samples, accuracy) in cells.items()
                ]
            for w in caught:
                msg = f"{w.category.__name__}: {w.message}"
                if msg not in seen_warnings:
                    seen_warnings.add(msg)
                    bar.write(f"greenml study: {name} bs{bs}: {msg}")
            new_rows += unit_rows
            csv_rows += unit_rows
            if out_dir is not None:
                _write(csv_rows, out_dir, parquet=False)
            bar.update(f"{name} bs{bs} r{rep}")
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    import pandas as pd

    if out_dir is not None:
        load = {"start": load_start, "end": _loadavg()}
        _write_meta(out_dir, rt, dev, hardware, dataset, threads, baseline, load)
        return _write(csv_rows, out_dir, parquet=parquet)
    df = pd.DataFrame(new_rows)
    return df[order_columns(df.columns)] if len(df) else df


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


def _write_meta(
    out_dir: str,
    rt: Any,
    dev: str,
    hardware: str,
    dataset: str,
    threads: int,
    baseline: Any,
    load: Any = None,
) -> None:
    """``study.json``: how energy was obtained here (sources, models, versions)."""
    import json

    import torch

    from .. import __version__

    channels = []
    for c in getattr(rt, "channels", []) or []:
        channels.append(
            {
                "domain": c.domain,
                "in_total": bool(getattr(c, "in_total", True)),
                "measured": bool(getattr(c, "measured", not c.domain.endswith(":estimated"))),
                "detail": str(getattr(c, "detail", "") or ""),
            }
        )
    meta = {
        "greenml": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": dev,
        "hardware": hardware,
        "dataset": dataset,
        "threads": threads,
        "energy_sources": channels,
        "idle_power_w": baseline.to_dict()["power_w"] if baseline is not None else None,
        "load_average_1_5_15m": load,
    }
    with open(os.path.join(out_dir, "study.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(dev))


def _run_unit(
    model: Any,
    phases: Sequence[str],
    train_batches: Any,
    test_batches: Any,
    n_steps: int,
    warmup: int,
    lr: float,
    dev: str,
    rt: Any,
    baseline: Any,
    name: str,
    Meter: Any,
) -> Dict[str, Tuple[Any, int, float]]:
    """Trains then infers; returns ``{phase: (stopped meter, samples, accuracy)}``."""
    import torch

    out: Dict[str, Tuple[Any, int, float]] = {}
    if "train" in phases:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()

        def train_step() -> int:
            x, y = next(train_batches)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return int(y.shape[0])

        for _ in range(warmup):
            train_step()
        _sync(dev)
        m = Meter(f"{name}-train", runtime=rt, baseline=baseline, sync_cuda=True)
        n = 0
        with m:
            for _ in range(n_steps):
                n += train_step()
                m.step()
        out["train"] = (m, n, math.nan)

    model.eval()
    correct = 0
    total = 0

    def infer_step(count: bool) -> int:
        nonlocal correct, total
        x, y = next(test_batches)
        x = x.to(dev, non_blocking=True)
        pred = model(x).argmax(dim=1)
        if count:
            correct += int((pred.cpu() == y).sum())
            total += int(y.shape[0])
        return int(y.shape[0])

    with torch.inference_mode():
        for _ in range(warmup):
            infer_step(False)
        _sync(dev)
        if "inference" in phases:
            m = Meter(f"{name}-inference", runtime=rt, baseline=baseline, sync_cuda=True)
            n = 0
            with m:
                for _ in range(n_steps):
                    n += infer_step(True)
                    m.step()
            out["inference"] = (m, n, math.nan)
        else:
            for _ in range(n_steps):
                infer_step(True)
    accuracy = correct / total if total else math.nan
    return {ph: (m, n, accuracy) for ph, (m, n, _) in out.items()}


def _row(
    name: str,
    width: float,
    f: Mapping[str, Any],
    bs: int,
    phase: str,
    n_steps: int,
    n_samples: int,
    m: Any,
    accuracy: float,
    rep: int,
    dev: str,
    hardware: str,
    dataset: str,
    threads: int,
    baseline: Any,
) -> Dict[str, Any]:
    r = m.result(wait=True)  # a table on disk holds settled, final numbers
    row: Dict[str, Any] = {
        "model": name,
        "width": width,
        "params": int(f["params"]),
        "macs": int(f["macs"]),
        "macs_per_param": float(f["macs_per_param"]),
        "train_macs": int(f["train_macs"]) if f.get("train_macs") is not None else math.nan,
        "size_bytes": int(f["size_bytes"]),
        "batch_size": bs,
        "phase": phase,
        "steps": n_steps,
        "samples": n_samples,
        "duration_s": float(r.duration_s),
        "energy_j": float(r.energy_j),
        "uncertainty_j": float(r.uncertainty_j),
        "energy_per_sample_j": float(r.energy_j) / n_samples if n_samples else math.nan,
        "mean_power_w": float(r.mean_power_w),
        "co2e_g": float(r.co2e_g),
        "accuracy": float(accuracy),
        "repetition": rep,
        "device": dev,
        "hardware": hardware,
        "estimated_domains": ",".join(r.estimated_domains) or "none",
        "dataset": dataset,
        "threads": threads,
        "t_start_unix": float(r.t_start_unix) if r.t_start_unix is not None else time.time(),
    }
    for d, e in r.by_domain.items():
        row[domain_column(d)] = float(e)
    if baseline is not None:
        row["idle_power_w"] = float(baseline.total_power_w)
        row["net_energy_j"] = float(r.net_energy_j) if r.net_energy_j is not None else math.nan
    return row
