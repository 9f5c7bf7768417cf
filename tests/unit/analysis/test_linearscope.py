"""LinearScope against hand-built linearisations and exact Jacobians."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis import LinearScope
from interp import InterpError, ShapeError, count_hooks


def tanh_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double().eval()


def test_matches_the_hand_built_linearisation() -> None:
    net = tanh_mlp()
    x0 = torch.randn(5, dtype=torch.float64)
    lin = LinearScope(net).interpret(x0)
    w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    z = w1 @ x0 + b1
    gain = torch.tanh(z) / z
    a = w2 @ torch.diag(gain) @ w1
    c = w2 @ (gain * b1) + b2
    torch.testing.assert_close(lin.matrix(), a.detach())
    torch.testing.assert_close(lin.bias, c.detach())
    torch.testing.assert_close(lin.apply(x0) + lin.bias, net(x0[None])[0].detach())
    torch.testing.assert_close(lin.contributions(1).sum() + lin.bias[1], lin.output[1])
    assert count_hooks(net) == 0


def test_inputs_are_cast_to_the_model_dtype() -> None:
    net = tanh_mlp()  # float64, like every estimator's model: float32 inputs are cast to it
    x0 = torch.randn(5)
    lin = LinearScope(net).interpret(x0)
    assert lin.x0.dtype == lin.output.dtype == torch.float64
    torch.testing.assert_close(lin.output, net(x0.double()[None])[0].detach())
    torch.testing.assert_close(lin.apply(lin.x0) + lin.bias, lin.output)


def test_piecewise_linear_cnn_is_its_jacobian() -> None:
    torch.manual_seed(1)
    net = (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 6),
            nn.LeakyReLU(0.1),
            nn.Linear(6, 4),
        )
        .double()
        .eval()
    )
    x0 = torch.randn(1, 8, 8, dtype=torch.float64)
    lin = LinearScope(net).interpret(x0)
    jac = torch.autograd.functional.jacobian(lambda x: net(x[None])[0], x0)
    torch.testing.assert_close(lin.matrix(), jac.reshape(4, -1))
    # inside x0's linear region the interpretation is exact
    x = x0 + 1e-7 * torch.randn_like(x0)
    torch.testing.assert_close(lin.apply(x) + lin.bias, net(x[None])[0].detach())


def test_transpose_and_svd() -> None:
    net = tanh_mlp()
    lin = LinearScope(net).interpret(torch.randn(5, dtype=torch.float64))
    x, y = torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(lin.apply(x) @ y, x @ lin.apply_transposed(y))
    _, s, _ = lin.svd(2)
    torch.testing.assert_close(s, torch.linalg.svdvals(lin.matrix())[:2])
    torch.testing.assert_close(lin.column(2), lin.matrix()[:, 2])


def test_errors() -> None:
    net = tanh_mlp()
    with pytest.raises(ShapeError, match="NaN"):
        LinearScope(net).interpret(torch.full((5,), float("nan"), dtype=torch.float64))
    lin = LinearScope(net).interpret(torch.randn(5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="input-shaped"):
        lin.apply(torch.randn(4, dtype=torch.float64))
    with pytest.raises(ShapeError, match="Output index"):
        lin.row(3)
    with pytest.raises(InterpError, match="module '2' of type Softmax"):  # checked when used
        LinearScope(nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Softmax(-1))).fit()
    with pytest.raises(InterpError, match="eval mode"):
        LinearScope(net.train()).interpret(torch.randn(5, dtype=torch.float64))


def test_contribution_graph_adds_up_to_each_unit() -> None:
    net = (
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
        .double()
        .eval()
    )
    x0 = torch.randn(4, dtype=torch.float64)
    lin = LinearScope(net).interpret(x0)
    graph = lin.contribution_graph()
    assert len(graph.nodes) == 4 + 6 + 5 + 2 and len(graph.edges) == 4 * 6 + 6 * 5 + 5 * 2
    # incoming contributions plus the linearised bias give each unit's activation
    h1 = torch.tanh(net[2](torch.relu(net[0](x0[None]))))[0]
    z1 = net[2](torch.relu(net[0](x0[None])))[0]
    for j in range(5):
        incoming = sum(e.score for e in graph.edges.values() if e.dst == f"h2.{j}")
        bias = float(h1[j] / z1[j] * net[2].bias[j])
        assert abs(incoming + bias - float(h1[j])) < 1e-10
    assert graph.top(5, prune=False).n_edges_in_graph == 5
    with pytest.raises(InterpError, match="at least one Linear"):
        LinearScope(nn.Sequential(nn.Tanh()).eval()).interpret(x0).contribution_graph()


def test_cnn_contribution_graph_between_channels() -> None:
    """Channels are units: channel i's edge into channel j is conv(a_i) through j's ReLU and
    pooling mask, summed over j's positions; computed here by hand from the layers' weights."""
    torch.manual_seed(3)
    net = (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 3),
        )
        .double()
        .eval()
    )
    net[4].running_mean.normal_()
    net[4].running_var.uniform_(0.5, 2)
    x0 = torch.randn(2, 4, 4, dtype=torch.float64)
    graph = LinearScope(net).interpret(x0).contribution_graph()
    assert len(graph.nodes) == 2 + 3 + 16 + 3
    assert len(graph.edges) == 2 * 3 + 3 * 16 + 16 * 3
    a1 = net[:3](x0[None])[0]  # input of the second conv
    z = net[3](a1[None])[0]
    bn = net[4]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1)
    on = (net[4:6](z[None])[0] > 0).double()
    for i in range(3):
        masked = torch.zeros_like(a1)
        masked[i] = a1[i]
        conv = nn.functional.conv2d(masked[None], net[3].weight, padding=1)[0]
        flat = on * scale * conv
        for j in range(16):  # Flatten: unit j of h2 is one element of (4, 2, 2)
            assert abs(graph.edges[f"h1.{i}->h2.{j}"].score - float(flat.flatten()[j])) < 1e-10
    # every unit: incoming contributions + its bias share = its activation
    out = net(x0[None])[0]
    for j in range(3):
        incoming = sum(graph.edges[f"h2.{i}->y.{j}"].score for i in range(16))
        assert abs(incoming + float(net[7].bias[j]) - float(out[j])) < 1e-10


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_transformer_votes_add_up_to_the_logit(name: str) -> None:
    """The tiny models have no biases (GPT-2's are zero at initialisation): with every gain
    frozen, the token votes add up to the logit exactly."""
    import interp
    from analysis import TransformerLinearScope

    model = interp.load_model(name, dtype=torch.float64)
    lin = TransformerLinearScope(model).interpret(
        "When Mary and John went to the store, John gave a drink to"
    )
    k = int(lin.output.argmax())
    votes = lin.token_contributions(k)
    assert votes.shape == (15,)
    assert abs(float(lin.bias[k])) < 1e-6 * max(1.0, abs(float(lin.output[k])))
    # the row is the gradient of the frozen-gain map, not the plain gradient
    plain = model.run_with_grads(
        "When Mary and John went to the store, John gave a drink to",
        lambda lg: lg[0, -1, k],
        ["input"],
    ).gradients["input"][0]
    assert not torch.allclose(plain, lin.row(k))
    with pytest.raises(ShapeError, match="Output index"):
        lin.row(10**6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_transformer_map_forward_and_transposed(name: str) -> None:
    """``apply`` (forward-mode under the rules) and ``apply_transposed`` (reverse-mode) are the
    same linear map: A x0 reproduces every logit of a bias-free model, the adjoint identity
    holds, and the top singular pair satisfies A^T A v = s^2 v."""
    import interp
    from analysis import TransformerLinearScope

    model = interp.load_model(name, dtype=torch.float64)
    model("warm up")  # the bridge wires its own capture hooks on its first forward
    hooks_before = count_hooks(model.model)
    lin = TransformerLinearScope(model).interpret("When Mary and John went to the store")
    # exact up to the rules' 1e-6 stabiliser in the activation gains f(z)/z
    torch.testing.assert_close(lin.apply(lin.x0), lin.output, atol=1e-5, rtol=1e-5)
    assert float(lin.bias.abs().max()) < 1e-5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(lin.x0.shape, generator=g, dtype=torch.float64)
    y = torch.randn(lin.output.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close((lin.apply(x) * y).sum(), (x * lin.apply_transposed(y)).sum())
    _, s, vt = lin.svd(1)
    v = vt[0].view_as(lin.x0)
    torch.testing.assert_close(
        lin.apply_transposed(lin.apply(v)), s[0] ** 2 * v, atol=1e-6 * float(s[0]) ** 2, rtol=1e-6
    )
    assert count_hooks(model.model) == hooks_before
