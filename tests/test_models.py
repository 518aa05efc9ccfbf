"""The three networks: shapes, masking, and what an untrained model does."""

import torch

from hrlxf_models import Coordinator, CoordinatorConfig, Executor, ExecutorConfig, Planner, PlannerConfig


def test_planner_goal_shape_masked_sides_and_residual_over_its_base():
    torch.manual_seed(0)
    p = Planner(PlannerConfig())
    roles = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    base = torch.rand(3, 16) + 0.5
    x = (torch.randn(3, 12), torch.randn(3, 11, 10), roles, base)
    goal, value = p(*x)
    assert goal.shape == (3, 16) and value.shape == (3, 1)
    side = torch.stack([roles[:, 0], roles[:, 0], roles[:, 1], roles[:, 1]], -1).repeat(1, 4)
    assert torch.allclose(goal, base * side)  # untrained: the base goal (the rule goal), masked sides at 0
    with torch.no_grad():
        p.goal.weight.normal_()
    g = p(*x)[0].view(3, 4, 4)
    assert torch.all(g[1, :, :2] == 0) and torch.all(g[2, :, 2:] == 0)  # the side it cannot negotiate
    assert torch.all(g[0, :, [0, 2]] >= 0)  # quantities are non-negative
    b = base.view(3, 4, 4)
    assert torch.all((g[0, :, [1, 3]] >= 0.5 * b[0, :, [1, 3]] - 1e-6) & (g[0, :, [1, 3]] <= 1.5 * b[0, :, [1, 3]] + 1e-6))


def _executor_inputs(B=3, H=10):
    mask = torch.zeros(B, H + 1)
    mask[:, 5:] = -float("inf")
    mask[1, :] = -float("inf")
    mask[1, 3] = 0.0
    keep = torch.ones(B, 8, dtype=torch.bool)
    keep[:, :5] = False  # left padding
    return (torch.randn(B, 12), torch.randn(B, 16), torch.eye(2)[[0, 1, 0]], torch.randn(B, 12),
            torch.rand(B, 1), torch.randn(B, 8, 12), keep, mask)


def test_executor_masks_delivery_days_and_untrained_heads_return_the_baseline():
    torch.manual_seed(0)
    ex = Executor(ExecutorConfig())
    with torch.no_grad():
        ex.delta_head.weight.normal_()  # a trained-looking delta head
    out = ex(*_executor_inputs())
    assert out["op"].shape == (3, 3) and out["delta"].shape == (3, 11)
    assert torch.all(out["delta"].argmax(dim=1)[[0, 2]] < 5) and out["delta"][1].argmax() == 3
    fresh = Executor(ExecutorConfig())
    raw = fresh.quantity_price_heads(fresh(*_executor_inputs())["h"], torch.tensor([0, 3, 1]), torch.rand(3, 11))
    q, p = fresh.quantity_price(*raw, torch.tensor([0.3] * 3), torch.tensor([0.95] * 3))
    assert torch.allclose(q, torch.tensor([0.3] * 3)) and torch.allclose(p, torch.tensor([0.95] * 3))


def test_quantity_and_price_depend_on_the_chosen_delivery_day_and_its_room():
    """Autoregressive decoding: the same decision token, another delta (or another room there), other q and p."""
    torch.manual_seed(2)
    ex = Executor(ExecutorConfig())
    with torch.no_grad():
        ex.q_head.weight.normal_()
        ex.p_head.weight.normal_()
    h = ex(*_executor_inputs())["h"]
    room = torch.rand(3, 11)
    today = ex.quantity_price_heads(h, torch.zeros(3, dtype=torch.long), room)
    later = ex.quantity_price_heads(h, torch.full((3,), 10, dtype=torch.long), room)
    assert not torch.allclose(today[0], later[0]) and not torch.allclose(today[1], later[1])
    fuller = ex.quantity_price_heads(h, torch.zeros(3, dtype=torch.long), room + 1.0)
    assert not torch.allclose(today[0], fuller[0])
    scripted = torch.jit.script(ex.eval())  # the agent calls it through TorchScript
    assert torch.allclose(scripted.quantity_price_heads(h, torch.zeros(3, dtype=torch.long), room)[0], today[0], atol=1e-6)


def test_executor_padding_is_ignored():
    torch.manual_seed(1)
    ex = Executor(ExecutorConfig())
    with torch.no_grad():
        ex.op_head.weight.normal_()
    args = list(_executor_inputs())
    a = ex(*args)["op"]
    args[5] = args[5].clone()
    args[5][:, :5] = 99.0  # change only padded rounds
    assert torch.allclose(a, ex(*args)["op"], atol=1e-5)


def test_direct_mode_and_bad_mode():
    ex = Executor(ExecutorConfig(mode="direct"))
    raw = ex.quantity_price_heads(ex(*_executor_inputs())["h"], torch.zeros(3, dtype=torch.long), torch.zeros(3, 11))
    q, p = ex.quantity_price(*raw, torch.zeros(3), torch.zeros(3))
    assert torch.all(q > 0) and torch.allclose(p, torch.ones(3))
    try:
        Executor(ExecutorConfig(mode="sideways"))
    except ValueError as e:
        assert "mode" in str(e)
    else:
        raise AssertionError("a bad mode was accepted")


def test_coordinator_alpha_range_padding_and_residual_over_the_teacher():
    torch.manual_seed(0)
    c = Coordinator(CoordinatorConfig())
    threads = torch.randn(2, 5, 10)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    teacher = torch.rand(2, 5) * 2 - 1
    assert torch.allclose(c(threads, keep, torch.randn(2, 24), teacher), teacher, atol=1e-5)  # untrained: the teacher
    with torch.no_grad():
        c.head.weight.normal_(0.0, 0.05)
    a = c(threads, keep, torch.randn(2, 24), teacher)
    assert a.shape == (2, 5) and torch.all(a.abs() < 1) and not torch.allclose(a, teacher)
    threads2 = threads.clone()
    threads2[0, 3:] = 50.0
    a1 = c(threads, keep, torch.zeros(2, 24), teacher)
    a2 = c(threads2, keep, torch.zeros(2, 24), teacher)  # only padded threads changed
    assert torch.allclose(a1[0, :3], a2[0, :3], atol=1e-5)
