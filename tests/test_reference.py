"""The paper's SaLSa (``reference.SaLSaPaper``) against the talk's equations worked out by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from salsa_hf import PRESETS, SaLSa, SaLSaPaper
from salsa_hf.presets import from_name


def by_hand(steps: int, *, a=3.0, b=-2.0, w=1.5, c=0.3, beta3=0.99, delta=0.9, growth=2 ** (1 / 500), eta=0.1,
            beta1=0.9, beta2=0.999, eps=1e-8, warmup=10, longest=10):
    """Eq. 3.6-3.13 and Algorithm 2 on f(w) = a w^2 / 2 + b w, in plain floats: (w, eta, interval) per step."""
    f = lambda x: a * x * x / 2 + b * x  # noqa: E731
    m = v = h = s = 0.0
    fast = slow = 1e-8
    interval, since, out = 1, 0, []
    for k in range(1, steps + 1):
        g = a * w + b
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**k), v / (1 - beta2**k)
        precondition = 1 / (math.sqrt(v_hat) + eps)
        eta *= growth  # Algorithm 2, line 1
        if k <= warmup or since + 1 >= interval:
            since = 0
            s_new = beta3 * s + (1 - beta3) * g * g * precondition  # eq. 3.9
            while True:
                h_new = beta3 * h + (1 - beta3) * (f(w) - f(w - eta * precondition * g))  # eq. 3.7
                if h_new >= c * eta * s_new:  # eq. 3.8
                    break
                eta *= delta
            h, s = h_new, s_new
            fast, slow = 0.9 * fast + 0.1 * eta, 0.99 * slow + 0.01 * eta  # eq. 3.10-3.11
            r = fast / slow
            r = max(r, 1 / r)  # eq. 3.12
            interval = longest if r == 1 else min(longest, max(1, round(1 / (r - 1))))  # eq. 3.13
        else:
            since += 1
        w -= eta * precondition * m_hat  # the Adam step at the step size found (AdamSLS)
        out.append((w, eta, interval))
    return out


@pytest.mark.parametrize("settings", [{}, {"c": 0.9, "beta3": 0.5}, {"beta3": 0.0, "max_interval": 1, "c": 0.1}])
def test_the_reference_follows_the_equations_step_by_step(settings):
    w = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    opt = SaLSaPaper([w], **settings)
    hand = by_hand(40, **{k: v for k, v in settings.items() if k != "max_interval"},
                   longest=settings.get("max_interval", 10))
    searched_later = 0
    for expected_w, expected_eta, expected_interval in hand:
        opt.step(lambda: 3.0 * w[0] ** 2 / 2 - 2.0 * w[0])
        assert float(w.detach()) == pytest.approx(expected_w, rel=1e-12, abs=1e-12)
        assert opt.search.step_size == pytest.approx(expected_eta, rel=1e-12)
        assert opt.search.interval == expected_interval
        searched_later += opt.search.last_searched and opt.search.step > 10
    if settings.get("max_interval", 10) == 1:
        assert searched_later == 30  # plain Armijo: a search on every step


def test_the_frequency_rule_spaces_searches_once_the_step_size_settles():
    """Eq. 3.10-3.13: with a steady step size the averages agree and L reaches its clamp of 10."""
    w = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    opt = SaLSaPaper([w], growth=1.0)
    for _ in range(1500):
        opt.step(lambda: 3.0 * w[0] ** 2 / 2 - 2.0 * w[0])
    assert opt.search.interval == 10


def test_between_searches_both_classes_take_exactly_an_adam_step():
    """Where the two coincide: a step with no search is Adam's at the step size, in both."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randn(64)
    for cls in (SaLSa, SaLSaPaper):
        model = torch.nn.Linear(5, 1)
        opt = cls(model.parameters(), warmup_searches=1, max_interval=10)
        closure = lambda: torch.nn.functional.mse_loss(model(x).squeeze(-1), y)  # noqa: E731
        opt.step(closure)
        while opt.search.steps_since_search + 1 >= opt.search.interval:  # until a quiet step is next
            opt.step(closure)
        reference = torch.nn.Linear(5, 1)
        reference.load_state_dict(model.state_dict())
        adam = torch.optim.Adam(reference.parameters(), lr=opt.search.step_size, foreach=False)
        adam_state = adam.state_dict()
        for index, p in enumerate(model.parameters()):
            adam_state["state"][index] = {"step": torch.tensor(float(opt.search.step)),
                                          "exp_avg": opt.state[p]["exp_avg"].clone(),
                                          "exp_avg_sq": opt.state[p]["exp_avg_sq"].clone()}
        adam.load_state_dict(adam_state)
        adam.param_groups[0]["lr"] = opt.search.step_size * (1.0 if cls is SaLSa else opt.growth)
        opt.step(closure)
        assert not opt.search.last_searched
        torch.nn.functional.mse_loss(reference(x).squeeze(-1), y).backward()
        adam.step()
        for a, b in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_the_presets_name_the_product_and_the_papers_four():
    w = torch.nn.Parameter(torch.ones(2))
    built = {name: from_name(name, [w]) for name in PRESETS}
    assert type(built["salsa"]) is SaLSa
    assert all(type(built[n]) is SaLSaPaper for n in ("salsa_paper", "salsa_sgd", "sls", "sls_sgd"))
    assert (built["salsa_paper"].c, built["salsa_paper"].beta3, built["salsa_paper"].max_interval) == (0.3, 0.99, 10)
    assert built["salsa_sgd"].preconditioner == "sgd"
    for name in ("sls", "sls_sgd"):  # plain stochastic Armijo: no smoothing, a search on every step
        assert (built[name].beta3, built[name].max_interval, built[name].c) == (0.0, 1, 0.1)
    assert built["sls"].init_step_size == 1e-3


def test_a_reference_search_with_no_passing_trial_takes_no_step():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = SaLSaPaper([w], max_backtracks=5)

    def closure():  # every trial point looks worse
        loss = (w**2).sum()
        return loss if torch.is_grad_enabled() else loss + 1.0

    opt.step(closure)
    assert float(w) == pytest.approx(1.0) and opt.search.failed_searches == 1
    assert opt.search.step_size == pytest.approx(opt.init_step_size)


def test_the_reference_state_dict_resumes_bit_identically():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randn(64)
    model = torch.nn.Linear(5, 1)
    opt = SaLSaPaper(model.parameters())
    closure = lambda m: (lambda: torch.nn.functional.mse_loss(m(x).squeeze(-1), y))  # noqa: E731
    for _ in range(15):
        opt.step(closure(model))
    twin = torch.nn.Linear(5, 1)
    twin.load_state_dict(model.state_dict())
    resumed = SaLSaPaper(twin.parameters())
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # (state_dict() shares the moment tensors)
    for _ in range(15):
        opt.step(closure(model))
        resumed.step(closure(twin))
    assert resumed.search == opt.search
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
