"""LRP for plain torch models: conservation, the rules' definitions, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interp import COMPOSITES, Composite, InterpError, ShapeError, count_hooks, lrp, lrp_rules


def cnn(bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=bias),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 16, bias=bias),
        nn.ReLU(),
        nn.Linear(16, 10, bias=bias),
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval().double()


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "epsilon-plus"])
def test_relevance_is_conserved_without_biases(composite: str) -> None:
    net = cnn()
    # batch norm in eval mode is an affine map; without its shift it passes relevance on
    with torch.no_grad():
        net[1].running_mean.zero_()
        net[1].bias.zero_()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    relevance = lrp(net, x, target=3, composite=composite, epsilon=1e-9)
    out = net(x)[:, 3]
    torch.testing.assert_close(relevance.sum((1, 2, 3)), out, rtol=1e-6, atol=1e-9)


def test_forward_unchanged_and_no_trace() -> None:
    net = cnn(bias=True)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    before = net(x)
    with lrp_rules(net, "epsilon-plus"):
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)
    assert count_hooks(net) == 0 and torch.equal(net(x), before)


def test_epsilon_rule_on_one_linear_layer_matches_the_formula() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(4, 3, bias=True).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    eps = 0.1
    relevance = lrp(layer, x, target=2, composite="epsilon", epsilon=eps)
    z = layer(x)[:, 2]
    z_stab = z + eps * torch.sign(z)
    expected = x * layer.weight[2] * (z / z_stab)[:, None]  # R_i = x_i w_i R / (z + eps sign z)
    torch.testing.assert_close(relevance, expected)


def test_zplus_rule_matches_the_formula() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.ReLU(), nn.Linear(5, 2, bias=False))
    net = net.double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    relevance = lrp(net, x, target=0, composite="zplus", epsilon=1e-12)
    hidden = torch.relu(net[0](x))
    w_plus = net[2].weight[0].clamp(min=0)
    r_hidden = hidden * w_plus / (hidden @ w_plus)[:, None] * net(x)[:, :1]
    # first layer: epsilon rule (inputs can be negative)
    expected = x[:, :, None] * net[0].weight.T[None] * (r_hidden / (x @ net[0].weight.T))[:, None]
    torch.testing.assert_close(relevance, expected.sum(-1), rtol=1e-6, atol=1e-9)


def test_errors() -> None:
    net = cnn()
    with pytest.raises(InterpError, match="Did you mean 'zplus'"):
        lrp(net, torch.rand(1, 1, 8, 8, dtype=torch.float64), composite="zplu")
    with pytest.raises(ShapeError, match="target"):
        lrp(net, torch.rand(1, 1, 8, 8, dtype=torch.float64), target=12)
    with pytest.raises(InterpError, match="eval mode"):
        lrp(net.train(), torch.rand(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(InterpError, match="no Linear or Conv"):
        lrp(nn.Sequential(nn.ReLU()).eval(), torch.rand(2, 3))


def test_lrp_equals_gradient_times_input_on_a_linear_model() -> None:
    """With no nonlinearity, norm or attention the LRP coefficients are the gradient: relevance
    is AtP's activation x gradient (epsilon -> 0)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 3, bias=False)).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x)[:, 1].sum(), [x])
    torch.testing.assert_close(
        lrp(net, x, target=1, composite="epsilon", epsilon=1e-15),
        (x * grad).detach(),
        rtol=1e-9,
        atol=1e-12,
    )


def test_composites_come_from_the_one_registry() -> None:
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    net = net.double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(InterpError, match="'relp' is a composite for transformer models"):
        lrp(net, x, composite="relp")
    assert COMPOSITES["zplus"].kind == "module" and COMPOSITES["zplus"].description
    only_epsilon = Composite("only-epsilon", ("epsilon",), kind="module")
    torch.testing.assert_close(
        lrp(net, x, target=0, composite=only_epsilon, epsilon=0.1),
        lrp(net, x, target=0, composite="epsilon", epsilon=0.1),
    )
