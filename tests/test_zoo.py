"""The model zoo: the paper's parameter counts at width 1, tiny widths that run, bad names."""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")

import greenml  # noqa: E402
from greenml import ConfigError, zoo  # noqa: E402

# Parameter counts (millions) in the paper's table, written out here so that the test does not
# read them from the module under test.
PAPER_M = {
    "lenet": 0.062,
    "mobilenet": 3.22,
    "efficientnetb0": 3.60,
    "dla": 15.1,
    "resnet18": 11.2,
    "vgg19": 20.0,
    "preactresnet18": 11.2,
    "googlenet": 6.17,
    "densenet121": 6.96,
    "resnext29_2x64d": 9.13,
    "mobilenetv2": 2.30,
    "senet18": 11.3,
    "regnetx_200mf": 2.32,
    "dpn26": 11.6,
}


def _sig3(x: float) -> str:
    return f"{x:.3g}"


@pytest.mark.parametrize("name", sorted(PAPER_M))
def test_given_a_paper_model_at_width_1_then_its_parameter_count_matches_the_table(name):
    model = zoo.create(name)
    params = sum(p.numel() for p in model.parameters())
    assert _sig3(params / 1e6) == _sig3(PAPER_M[name]), f"{name}: {params} parameters"


def test_the_zoo_lists_every_paper_model_and_the_extras():
    assert set(PAPER_M) <= set(zoo.names())
    assert {"vgg11", "vgg16", "shufflenetv2", "mlp"} <= set(zoo.names())
    assert set(zoo.PAPER_MODELS) == set(PAPER_M)


@pytest.mark.parametrize("name", zoo.names())
def test_given_a_tiny_width_then_the_model_maps_cifar_batches_to_class_scores(name):
    torch.manual_seed(0)
    model = zoo.create(name, width=0.125, num_classes=7)
    full = zoo.create(name) if name in ("lenet", "mlp") else None
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    small = sum(p.numel() for p in model.parameters())
    if full is not None:
        assert small < sum(p.numel() for p in full.parameters())


def test_width_shrinks_a_model_roughly_quadratically():
    full = sum(p.numel() for p in zoo.create("resnet18").parameters())
    half = sum(p.numel() for p in zoo.create("resnet18", width=0.5).parameters())
    assert 0.2 < half / full < 0.3


def test_given_bad_arguments_then_errors_name_the_option_and_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*resnet18"):
        zoo.create("resnet19")
    with pytest.raises(ConfigError, match="width=0"):
        zoo.create("lenet", width=0)
    with pytest.raises(ConfigError, match="num_classes"):
        zoo.create("lenet", num_classes=0)
    assert zoo.canonical("EfficientNet-B0") == "efficientnetb0"


def test_importing_greenml_does_not_import_torch_and_zoo_loads_on_first_use(tmp_path):
    import subprocess

    code = (
        "import sys, greenml; assert 'torch' not in sys.modules; "
        "names = greenml.zoo.names(); assert 'torch' not in sys.modules; "
        "import greenml.study; assert 'torch' not in sys.modules; print(len(names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(zoo.names())
    assert greenml.zoo is zoo
