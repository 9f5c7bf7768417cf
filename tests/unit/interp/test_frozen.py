"""Frozen gains: the derivative at x0 is the gain-linearised network A(x0), for activations
written as modules or called as functions, and nothing is left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp import InterpError, check_linearisable, count_hooks, frozen_gains
from interp._frozen import SMOOTH_ACTIVATIONS


def jacobian(net: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    with frozen_gains(net):
        return torch.autograd.functional.jacobian(net, x0)


def gain_reference(act, h: torch.Tensor) -> torch.Tensor:
    """The gain f(h)/h (float64; no h here is within 1e-12 of zero)."""
    return act(h) / h


class CallsTanh(nn.Module):
    """An activation called as a function inside ``forward``, not a module."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(x)))


def test_functional_tanh_is_linearised_by_its_gain() -> None:
    """A(x0) x0 + c(x0) = f(x0) with A = W2 diag(g) W1 and c = W2 diag(g) b1 + b2, g the gain
    tanh(h)/h at h = W1 x0 + b1 (the old code gave the Jacobian diag(1 - tanh^2) instead)."""
    torch.manual_seed(0)
    net = CallsTanh().double()
    x0 = torch.randn(3, dtype=torch.float64)
    h = net.lin(x0).detach()
    g = gain_reference(torch.tanh, h)
    w1, b1, w2, b2 = net.lin.weight, net.lin.bias, net.out.weight, net.out.bias
    expected = w2 @ torch.diag(g) @ w1
    a = jacobian(net, x0)
    torch.testing.assert_close(a, expected.detach())
    c = (w2 @ (g * b1) + b2).detach()
    torch.testing.assert_close(a @ x0 + c, net(x0).detach())
    same_as_module = nn.Sequential(net.lin, nn.Tanh(), net.out)
    torch.testing.assert_close(jacobian(same_as_module, x0), a)


FUNCTIONS = {
    "torch.tanh": (torch.tanh, torch.tanh),
    "Tensor.sigmoid": (lambda x: x.sigmoid(), torch.sigmoid),
    "F.gelu(tanh)": (
        lambda x: F.gelu(x, approximate="tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
    "F.silu": (F.silu, F.silu),
    "F.softplus": (lambda x: F.softplus(x, beta=2.0), lambda x: F.softplus(x, beta=2.0)),
    "F.elu inplace": (lambda x: F.elu(x, 0.5, True), lambda x: F.elu(x, 0.5)),
    "F.silu inplace": (lambda x: F.silu(x, inplace=True), F.silu),
    "Tensor.tanh_": (lambda x: x.tanh_(), torch.tanh),
    "F.hardtanh_": (lambda x: F.hardtanh_(x, -0.5, 0.5), lambda x: F.hardtanh(x, -0.5, 0.5)),
}


class Calls(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6, bias=False)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.lin(x))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_functional_form_takes_the_gain(name: str) -> None:
    call, act = FUNCTIONS[name]
    torch.manual_seed(1)
    net = Calls(call).double()
    x0 = torch.randn(4, dtype=torch.float64)
    h = net.lin(x0).detach()
    with torch.no_grad():
        before = net(x0)
    with frozen_gains(net):
        with torch.no_grad():
            inside = net(x0)
        a = torch.autograd.functional.jacobian(net, x0)
    assert torch.equal(inside, before)  # forward values bit for bit, in-place forms too
    torch.testing.assert_close(a, gain_reference(act, h)[:, None] * net.lin.weight.detach())


@pytest.mark.parametrize("module", SMOOTH_ACTIVATIONS, ids=lambda t: t.__name__)
def test_every_activation_module_takes_the_gain(module: type[nn.Module]) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), module()).double()
    x0 = torch.randn(4, dtype=torch.float64)
    h = net[0](x0).detach()
    expected = gain_reference(net[1], h)[:, None] * net[0].weight.detach()
    torch.testing.assert_close(jacobian(net, x0), expected)
    with frozen_gains(net):  # forward mode too (LinearScope's apply)
        _, tangent = torch.func.jvp(net, (x0,), (x0,))
    torch.testing.assert_close(tangent, expected @ x0)


@pytest.mark.parametrize("norm", [nn.LayerNorm(5), nn.RMSNorm(5, eps=1e-5)], ids=["ln", "rms"])
def test_norm_scale_is_frozen(norm: nn.Module) -> None:
    """With the scale constant, a norm is linear: A x0 = f(x0) - bias."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), norm).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
    check_linearisable(net)
    x0 = torch.randn(3, dtype=torch.float64)
    bias = getattr(net[1], "bias", None)
    shift = 0 if bias is None else bias.detach()
    torch.testing.assert_close(jacobian(net, x0) @ x0, net(x0).detach() - shift)


def test_calls_outside_the_model_keep_their_derivative() -> None:
    net = CallsTanh().double()
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with frozen_gains(net):
        (grad,) = torch.autograd.grad(torch.tanh(x).sum(), [x])
    torch.testing.assert_close(grad, 1 - torch.tanh(x).detach() ** 2)


def test_nothing_is_left_behind_even_after_an_exception() -> None:
    net = CallsTanh()
    x = torch.randn(2, 3)
    before = net(x)
    with pytest.raises(RuntimeError, match="inside"), frozen_gains(net):
        assert count_hooks(net) > 0 and torch._C._len_torch_function_stack() == 1
        raise RuntimeError("inside the block")
    assert count_hooks(net) == 0 and torch._C._len_torch_function_stack() == 0
    assert torch.equal(net(x), before)
    with pytest.raises(InterpError, match="torch.nn.Module"):
        frozen_gains(lambda x: x)
