"""``greenml.features``: MACs checked against the textbook formulas, parameters, sizes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import greenml  # noqa: E402
from greenml import ConfigError  # noqa: E402


def test_given_a_convolution_then_macs_are_cout_cin_k2_hout_wout():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    f = greenml.features(conv, (3, 32, 32))
    assert f["macs"] == 8 * 3 * 3 * 3 * 32 * 32  # bias additions are not multiplies
    assert f["params"] == 8 * 3 * 9 + 8
    assert f["macs_per_param"] == pytest.approx(f["macs"] / f["params"])
    assert f["size_bytes"] == 4 * f["params"]


def test_given_a_strided_depthwise_convolution_then_groups_divide_the_macs():
    conv = nn.Conv2d(16, 16, kernel_size=3, stride=2, padding=1, groups=16, bias=False)
    f = greenml.features(conv, (16, 32, 32))
    assert f["macs"] == 16 * 1 * 3 * 3 * 16 * 16
    # training: weight gradient (one forward's worth; input gradient not needed for an input)
    assert f["train_macs"] == 2 * f["macs"]


def test_given_a_linear_layer_then_macs_are_in_times_out_and_training_triples_inside_a_net():
    lin = nn.Linear(100, 10)
    f = greenml.features(lin, (100,))
    assert f["macs"] == 1000
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    g = greenml.features(net, (100,))
    assert g["macs"] == 100 * 50 + 50 * 10
    # forward + weight gradients of both + input gradient of the second layer
    assert g["train_macs"] == g["macs"] + (100 * 50 + 50 * 10) + 50 * 10


def test_resnet18_at_cifar_size_is_about_0_56_gmacs_and_the_model_is_left_unchanged():
    model = greenml.zoo.create("resnet18")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f = greenml.features(model, (3, 32, 32))
    assert f["macs"] / 1e9 == pytest.approx(0.556, abs=0.005)
    assert f["train_macs"] == pytest.approx(3 * f["macs"], rel=0.01)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_a_frozen_model_has_no_training_macs_and_buffers_count_in_the_size():
    bn = nn.BatchNorm1d(4)
    for p in bn.parameters():
        p.requires_grad_(False)
    f = greenml.features(bn, (4,))
    assert f["train_macs"] is None and f["trainable_params"] == 0
    assert f["size_bytes"] == 4 * (8 + 8) + 8  # weight, bias, running mean/var, batch count


def test_given_bad_input_then_the_error_names_the_argument():
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        greenml.features("resnet18", (3, 32, 32))
    with pytest.raises(ConfigError, match="input_shape"):
        greenml.features(nn.Linear(2, 2), (0, 2))
