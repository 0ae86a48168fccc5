"""The SaLSa optimizer on its own: the line search, its state, its robustness."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from salsa_hf import PRESETS, SaLSa


@pytest.fixture(scope="module")
def cancer():
    """scikit-learn's breast-cancer data (569 real samples, 30 features), standardised."""
    x, y = load_breast_cancer(return_X_y=True)
    return torch.tensor(StandardScaler().fit_transform(x), dtype=torch.float32), torch.tensor(y)


def mlp(seed: int = 0, dropout: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(32, 2)
    )


def batches(data, steps: int, batch_size: int = 32, seed: int = 1):
    x, y = data
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        yield x[idx], y[idx]


def loss_closure(model, xb, yb):
    return lambda: torch.nn.functional.cross_entropy(model(xb), yb)


def train(model, optimizer, data, steps, seed=1):
    for xb, yb in batches(data, steps, seed=seed):
        optimizer.step(loss_closure(model, xb, yb))


def full_loss(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(data[0]), data[1]).item()


def test_defaults_end_below_adamw_as_the_trainer_runs_it(cancer):
    """The product's promise in small: below AdamW at the Trainer's defaults (lr 5e-5, linear decay
    to 0), both told the run's length."""
    salsa_model, adamw_model = mlp(), mlp()
    salsa = SaLSa(salsa_model.parameters(), total_steps=300)
    adamw = torch.optim.AdamW(adamw_model.parameters(), lr=5e-5, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(adamw, lambda step: 1 - step / 300)
    for xb, yb in batches(cancer, 300):
        salsa.step(loss_closure(salsa_model, xb, yb))
        adamw.zero_grad()
        torch.nn.functional.cross_entropy(adamw_model(xb), yb).backward()
        adamw.step()
        schedule.step()
    assert full_loss(salsa_model, cancer) < full_loss(adamw_model, cancer)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_decreases_the_loss(cancer, name):
    model = mlp()
    start = full_loss(model, cancer)
    # (200 steps: the defaults start from a fine-tuning step size, 1e-4, and grow from there.)
    train(model, SaLSa.from_name(name, model.parameters()), cancer, 200)
    assert full_loss(model, cancer) < 0.5 * start


def preconditioned_sq_norm(optimizer: SaLSa) -> float:
    """<g, P g> recomputed from the gradients and moments, independently of functional.py."""
    total = 0.0
    bias_correction2 = 1 - 0.999**optimizer.search.step
    for group in optimizer.param_groups:
        for p in group["params"]:
            denom = (optimizer.state[p]["exp_avg_sq"] / bias_correction2).sqrt() + group["eps"]
            total += (p.grad * p.grad / denom).sum().item()
    return total


def test_every_accepted_search_satisfies_the_smoothed_armijo_inequality(cancer):
    """The paper's test (eq. 3.6-3.9): averages decayed per search, backtracking by delta."""
    model = mlp()
    opt = SaLSa(model.parameters(), search_step="trial", search_direction="gradient", c=0.3, beta3=0.9,
                smooth_over="search", backtracking="constant")
    searched = 0
    for xb, yb in batches(cancer, 80):
        trial_losses = []
        closure = loss_closure(model, xb, yb)

        def recording_closure():
            loss = closure()
            if not torch.is_grad_enabled():
                trial_losses.append(loss.item())
            return loss

        before = copy.copy(opt.search)
        loss = opt.step(recording_closure).item()
        after = opt.search
        if not after.last_searched:
            assert trial_losses == []
            continue
        searched += 1
        assert len(trial_losses) == after.last_backtracks + 1
        expected_norm_avg = 0.9 * before.norm_avg + 0.1 * preconditioned_sq_norm(opt)
        assert after.norm_avg == pytest.approx(expected_norm_avg, rel=1e-5)
        accepted = trial_losses[-1]
        assert after.decrease_avg == pytest.approx(0.9 * before.decrease_avg + 0.1 * (loss - accepted), rel=1e-9)
        assert after.decrease_avg >= 0.3 * after.step_size * after.norm_avg or accepted == loss
        # Every rejected trial failed the test at its own step size.
        for k, rejected in enumerate(trial_losses[:-1]):
            eta = after.step_size / opt.delta ** (len(trial_losses) - 1 - k)
            h = 0.9 * before.decrease_avg + 0.1 * (loss - rejected)
            assert not (h >= 0.3 * eta * after.norm_avg) or not math.isfinite(rejected)
    assert searched >= 10


def test_all_evaluations_of_a_step_see_the_same_random_state_and_leave_it_as_one_call_would(cancer):
    model = mlp(dropout=0.5)
    model.train()
    opt = SaLSa(model.parameters(), c=0.99, init_step_size=1.0)  # c near 1 forces backtracks
    xb, yb = next(batches(cancer, 1))
    masks = []

    def closure():
        masks.append(torch.rand(4))
        return torch.nn.functional.cross_entropy(model(xb), yb)

    torch.manual_seed(123)
    opt.step(closure)
    after_step = torch.rand(8)
    assert len(masks) >= 3
    assert all(torch.equal(m, masks[0]) for m in masks)

    torch.manual_seed(123)
    closure()
    assert torch.equal(torch.rand(8), after_step)


def capture_evaluate(model, opt, closure):
    """Run the optimizer's closure plumbing without stepping: the loss and the replay closure."""
    captured = {}

    def fake_step(loss, evaluate):
        captured["loss"], captured["evaluate"] = loss, evaluate
        return loss

    original = opt._step
    opt._step = fake_step
    try:
        opt.step(closure)
    finally:
        opt._step = original
    return captured["loss"], lambda: captured["evaluate"]().item()


def test_replaying_at_the_current_point_gives_the_training_loss_bit_for_bit(cancer):
    model = mlp(dropout=0.5)
    model.train()
    opt = SaLSa(model.parameters())
    xb, yb = next(batches(cancer, 1))
    loss, evaluate = capture_evaluate(model, opt, loss_closure(model, xb, yb))
    assert evaluate() == loss.item()


def snapshot(model, opt):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    return buffer


def test_resume_from_state_dict_is_bit_identical(cancer):
    model = mlp(dropout=0.3)
    model.train()
    opt = SaLSa(model.parameters(), weight_decay=0.01)
    data = list(batches(cancer, 60))
    torch.manual_seed(7)
    for xb, yb in data[:30]:
        opt.step(loss_closure(model, xb, yb))
    saved = snapshot(model, opt)
    for xb, yb in data[30:]:
        opt.step(loss_closure(model, xb, yb))

    checkpoint = torch.load(saved, weights_only=False)
    resumed_model = mlp(seed=99, dropout=0.3)
    resumed_model.train()
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = SaLSa(resumed_model.parameters(), weight_decay=0.01)
    resumed.load_state_dict(checkpoint["opt"])
    torch.set_rng_state(checkpoint["rng"])
    assert resumed.search.step == 30 and resumed.param_groups[0]["lr"] == resumed.search.step_size
    for xb, yb in data[30:]:
        resumed.step(loss_closure(resumed_model, xb, yb))
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert resumed.search == opt.search


def test_state_dict_holds_every_scalar_of_the_search(cancer):
    model = mlp()
    opt = SaLSa(model.parameters())
    train(model, opt, cancer, 25)
    line_search = opt.state_dict()["line_search"]
    for key in ("step", "step_size", "decrease_avg", "norm_avg", "fast_avg", "slow_avg",
                "steps_since_search", "interval", "searches", "backtracks", "trial_forwards"):
        assert line_search[key] == getattr(opt.search, key)
    assert line_search["step"] == 25 and line_search["searches"] >= 10


def test_loading_a_foreign_state_dict_is_refused(cancer):
    model = mlp()
    adam_state = torch.optim.Adam(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="line_search"):
        SaLSa(model.parameters()).load_state_dict(adam_state)


@pytest.mark.parametrize("name", ["salsa", "salsa_sgd", "sls"])
def test_foreach_path_equals_reference_path(cancer, name):
    models = [mlp(), mlp()]
    opts = [SaLSa.from_name(name, m.parameters(), foreach=f, weight_decay=0.01) for m, f in zip(models, (True, False))]
    for xb, yb in batches(cancer, 40):
        for model, opt in zip(models, opts):
            torch.manual_seed(0)
            opt.step(loss_closure(model, xb, yb))
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    assert opts[0].search == opts[1].search


def test_a_step_between_searches_is_exactly_an_adam_step(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), warmup_searches=0)
    data = batches(cancer, 100)
    while True:  # run until the next step will not search
        xb, yb = next(data)
        opt.step(loss_closure(model, xb, yb))
        if opt.search.interval > opt.search.steps_since_search + 1:
            break
    reference = copy.deepcopy(model)
    adam = torch.optim.Adam(reference.parameters(), lr=opt.search.step_size, foreach=False)
    adam_state = adam.state_dict()
    for index, p in enumerate(model.parameters()):
        adam_state["state"][index] = {
            "step": torch.tensor(float(opt.search.step)),
            "exp_avg": opt.state[p]["exp_avg"].clone(),
            "exp_avg_sq": opt.state[p]["exp_avg_sq"].clone(),
        }
    adam.load_state_dict(adam_state)
    xb, yb = next(data)
    opt.step(loss_closure(model, xb, yb))
    assert not opt.search.last_searched
    adam.param_groups[0]["lr"] = opt.search.step_size  # the step size this step used
    torch.nn.functional.cross_entropy(reference(xb), yb).backward()
    adam.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_frozen_parameters_are_untouched_and_get_no_state(cancer):
    model = mlp()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    opt = SaLSa(model.parameters(), weight_decay=0.1)
    train(model, opt, cancer, 20)
    assert torch.equal(frozen, before)
    assert frozen not in opt.state
    assert model[3].weight in opt.state


def test_weight_decay_is_decoupled_per_group_and_scaled_by_the_step_size(cancer):
    model = mlp(dropout=0.0)
    spare = torch.nn.Parameter(torch.ones(5))  # gets a zero gradient: only decay moves it
    opt = SaLSa([
        {"params": model.parameters(), "weight_decay": 0.0},
        {"params": [spare], "weight_decay": 0.5},
    ])
    for xb, yb in batches(cancer, 5):
        before = spare.detach().clone()
        opt.step(lambda: torch.nn.functional.cross_entropy(model(xb), yb) + 0.0 * spare.sum())
        torch.testing.assert_close(spare.detach(), before * (1 - opt.search.step_size * 0.5), rtol=0, atol=0)


def test_state_is_no_larger_than_adamw_and_follows_device_and_dtype(cancer):
    model = mlp().double()
    data = (cancer[0].double(), cancer[1])
    salsa = SaLSa(model.parameters())
    train(model, salsa, data, 3)
    adamw = torch.optim.AdamW(model.parameters())
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(data[0]), data[1]).backward()
    adamw.step()

    def tensor_bytes(opt):
        return sum(
            v.numel() * v.element_size()
            for state in opt.state_dict()["state"].values() for v in state.values() if torch.is_tensor(v)
        )

    assert tensor_bytes(salsa) <= tensor_bytes(adamw)
    sgd = SaLSa.from_name("salsa_sgd", model.parameters())
    train(model, sgd, data, 3)
    assert tensor_bytes(sgd) <= tensor_bytes(adamw) / 2
    for p in model.parameters():
        assert salsa.state[p]["exp_avg_sq"].dtype == torch.float64
        assert salsa.state[p]["exp_avg"].device == p.device


def state_copy(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def assert_unchanged(model, opt, saved):
    model_state, opt_state = saved
    for key, value in model.state_dict().items():
        assert torch.equal(value, model_state[key]), key
    now = opt.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            assert torch.equal(now["state"][index][key], value)
    return now["line_search"], opt_state["line_search"]


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_loss_or_gradient_skips_the_step_and_touches_nothing(cancer, where):
    model = mlp()
    opt = SaLSa(model.parameters())
    train(model, opt, cancer, 12)
    saved = state_copy(model, opt)
    xb, yb = next(batches(cancer, 1))

    def poisoned():
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        return loss * float("nan") if where == "loss" else loss

    hook = model[0].bias.register_hook(lambda g: g * float("nan")) if where == "gradient" else None
    opt.step(poisoned)
    if hook is not None:
        hook.remove()
    now, before = assert_unchanged(model, opt, saved)
    assert now["skipped_steps"] == before["skipped_steps"] + 1
    assert {k: v for k, v in now.items() if k not in ("skipped_steps", "training_forwards")} == {
        k: v for k, v in before.items() if k not in ("skipped_steps", "training_forwards")
    }
    train(model, opt, cancer, 5)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_first_step_creates_no_state(cancer):
    model = mlp()
    opt = SaLSa(model.parameters())
    xb, yb = next(batches(cancer, 1))
    opt.step(lambda: torch.nn.functional.cross_entropy(model(xb), yb) * float("inf"))
    assert len(opt.state) == 0 and opt.search.step == 0 and opt.search.skipped_steps == 1


def closure_spoiling_first_trials(model, xb, yb, count, spoil):
    """A closure whose first ``count`` trial evaluations (no grad) return ``spoil(loss)``."""
    calls = {"trials": 0}

    def closure():
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        if not torch.is_grad_enabled():
            calls["trials"] += 1
            if calls["trials"] <= count:
                return spoil(loss)
        return loss

    return closure


def test_non_finite_trial_losses_are_rejected(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), backtracking="constant")
    xb, yb = next(batches(cancer, 1))
    opt.step(closure_spoiling_first_trials(model, xb, yb, 3, lambda loss: loss * float("inf")))
    assert opt.search.last_backtracks == 3
    assert opt.search.step_size == pytest.approx(opt.init_step_size * opt.growth * opt.delta**3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_exhausted_backtracks_leave_the_point_finite_and_unchanged_and_are_counted(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), max_backtracks=4)
    xb, yb = next(batches(cancer, 1))
    before = [p.detach().clone() for p in model.parameters()]

    def closure():  # every trial point looks worse
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        return loss if torch.is_grad_enabled() else loss + 1.0

    opt.step(closure)
    assert opt.search.failed_searches == 1 and opt.search.last_backtracks == 4
    assert opt.search.trial_forwards == 4
    grown_per_step = opt.growth if opt.grow_on == "step" else 1.0
    assert opt.search.step_size == opt.init_step_size * grown_per_step  # unchanged by the failed search
    for a, b in zip(model.parameters(), before):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_zero_loss_and_zero_gradient_divide_by_nothing():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = SaLSa([w])
    for _ in range(12):
        opt.step(lambda: (w * 0.0).sum())
    assert torch.equal(w, torch.zeros(3))
    assert math.isfinite(opt.search.step_size) and opt.search.skipped_steps == 0


def test_counters_match_what_happened(cancer):
    model = mlp()
    opt = SaLSa(model.parameters())
    evaluations = {"with_grad": 0, "trial": 0}
    for xb, yb in batches(cancer, 50):
        closure = loss_closure(model, xb, yb)

        def counting():
            evaluations["with_grad" if torch.is_grad_enabled() else "trial"] += 1
            return closure()

        opt.step(counting)
    search = opt.search
    assert search.training_forwards == evaluations["with_grad"] == 50
    assert search.trial_forwards == evaluations["trial"]
    assert search.trial_forwards == search.searches + search.backtracks
    assert search.extra_forward_fraction == pytest.approx(evaluations["trial"] / 50)
    assert 1 <= search.interval <= opt.max_interval
    assert opt.param_groups[0]["lr"] == search.step_size


def test_step_without_closure_points_to_the_trainer():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match="SaLSaTrainer"):
        SaLSa([w]).step()


def test_prepare_step_equals_closure_step(cancer):
    models = [mlp(dropout=0.0), mlp(dropout=0.0)]
    opts = [SaLSa(m.parameters()) for m in models]
    for xb, yb in batches(cancer, 15):
        opts[0].step(loss_closure(models[0], xb, yb))
        models[1].zero_grad()
        loss = torch.nn.functional.cross_entropy(models[1](xb), yb)
        loss.backward()
        opts[1].prepare_step(loss, loss_closure(models[1], xb, yb))
        opts[1].step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


BAD_ARGUMENTS = [
    ("c", 0.0, "(0, 1)"), ("c", 1.0, "(0, 1)"), ("c", -0.5, "(0, 1)"),
    ("beta3", 1.0, "[0, 1)"), ("beta3", -0.1, "[0, 1)"),
    ("delta", 0.0, "(0, 1)"), ("delta", 1.5, "(0, 1)"),
    ("growth", 0.9, ">= 1"), ("growth", float("inf"), ">= 1"),
    ("init_step_size", 0.0, "> 0"), ("init_step_size", -1e-3, "> 0"), ("init_step_size", float("nan"), "> 0"),
    ("max_backtracks", 0, ">= 1"), ("max_backtracks", 2.5, ">= 1"),
    ("warmup_searches", -1, ">= 0"),
    ("betas", (1.0, 0.999), "[0, 1)"), ("betas", (0.9, -0.1), "[0, 1)"),
    ("eps", -1e-8, ">= 0"), ("weight_decay", -0.1, ">= 0"),
    ("preconditioner", "lion", "'adam', 'sgd'"),
    ("grow_on", "epoch", "'search', 'step'"),
    ("search_step", "newton", "'momentum', 'trial'"),
    ("search_direction", "random", "'update', 'previous', 'gradient'"),
    ("smooth_over", "epoch", "'step', 'search'"),
    ("backtracking", "bisect", "'accelerating', 'constant'"),
    ("interval_rule", "fixed", "'agreement', 'steady'"),
    ("max_interval", 0, ">= 1"), ("max_interval", 2.5, ">= 1"),
    ("cooldown", 1.5, "[0, 1]"), ("cooldown", -0.1, "[0, 1]"),
    ("total_steps", 0, ">= 1"), ("total_steps", 10.5, ">= 1"),
    ("loss_trend", 1, "True or False"),
    ("smoothing", "yes", "True or False"), ("foreach", None, "True or False"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_ARGUMENTS)
def test_bad_hyperparameters_raise_naming_argument_value_and_range(name, value, allowed):
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError) as err:
        SaLSa([w], **{name: value})
    message = str(err.value)
    assert name.split("[")[0] in message and allowed in message
    shown = value[0] if name == "betas" and value[0] >= 1 else value[1] if name == "betas" else value
    assert repr(shown) in message


def test_unknown_preset_and_per_group_search_settings_are_refused():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="'salsa', 'salsa_sgd', 'sls', 'sls_sgd'.*'adamw'"):
        SaLSa.from_name("adamw", [w])
    with pytest.raises(ValueError, match=r"\['c'\]"):
        SaLSa([{"params": [w], "c": 0.5}])


def test_presets_are_the_papers_four_optimizers():
    w = torch.nn.Parameter(torch.ones(2))
    salsa, salsa_sgd, sls, sls_sgd = (SaLSa.from_name(n, [w]) for n in ("salsa", "salsa_sgd", "sls", "sls_sgd"))
    assert (salsa.preconditioner, salsa.smoothing, salsa.adaptive_frequency) == ("adam", True, True)
    assert (salsa_sgd.preconditioner, salsa_sgd.smoothing) == ("sgd", True)
    assert (sls.preconditioner, sls.beta3, sls.adaptive_frequency, sls.c) == ("adam", 0.0, False, 0.1)
    # The plain baselines keep none of SaLSa's additions: a search along the gradient on every step.
    assert (sls.search_direction, sls.grow_on, sls.backtracking, sls.loss_trend, sls.cooldown) == (
        "gradient", "step", "constant", False, 0.0)
    assert (sls_sgd.preconditioner, sls_sgd.beta3, sls_sgd.adaptive_frequency) == ("sgd", 0.0, False)


def test_smoothing_over_steps_weighs_a_search_by_the_steps_it_stands_for(cancer):
    """smooth_over="step": a search k steps after the averages last moved keeps beta3**k of them."""
    model = mlp()
    opt = SaLSa(model.parameters(), search_step="trial", search_direction="gradient", beta3=0.95,
                smooth_over="step", warmup_searches=3)
    checked = 0
    for xb, yb in batches(cancer, 120):
        before = copy.copy(opt.search)
        opt.step(loss_closure(model, xb, yb))
        after = opt.search
        if after.last_searched and after.last_backtracks < opt.max_backtracks:
            keep = 0.95 ** (before.average_age + 1)
            expected = keep * before.norm_avg + (1 - keep) * preconditioned_sq_norm(opt)
            assert after.norm_avg == pytest.approx(expected, rel=1e-5)
            assert after.average_age == 0
            checked += before.average_age + 1 > 1  # a search after quiet steps
        else:
            assert after.average_age == before.average_age + 1
    assert checked >= 3


def test_accelerating_backtracking_shrinks_by_delta_then_delta_squared_and_so_on(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), backtracking="accelerating", delta=0.8, grow_on="search")
    xb, yb = next(batches(cancer, 1))
    opt.step(closure_spoiling_first_trials(model, xb, yb, 4, lambda loss: loss + 1.0))
    assert opt.search.last_backtracks == 4
    assert opt.search.step_size == pytest.approx(opt.init_step_size * opt.growth * 0.8 ** (1 + 2 + 3 + 4))


def test_searching_along_the_update_accepts_the_adam_step_it_tested(cancer):
    """search_direction="update": the accepted trial point is the Adam step at the step size found."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), search_direction="update", warmup_searches=100)
    data = list(batches(cancer, 6))
    for xb, yb in data[:5]:
        opt.step(loss_closure(model, xb, yb))
    reference = copy.deepcopy(model)
    adam = torch.optim.Adam(reference.parameters(), foreach=False)
    adam_state = adam.state_dict()
    for index, p in enumerate(model.parameters()):
        adam_state["state"][index] = {"step": torch.tensor(float(opt.search.step)),
                                      "exp_avg": opt.state[p]["exp_avg"].clone(),
                                      "exp_avg_sq": opt.state[p]["exp_avg_sq"].clone()}
    adam.load_state_dict(adam_state)
    trial_points = []
    xb, yb = data[5]

    def closure():
        if not torch.is_grad_enabled():
            trial_points.append([p.detach().clone() for p in model.parameters()])
        return torch.nn.functional.cross_entropy(model(xb), yb)

    opt.step(closure)
    assert opt.search.last_searched and trial_points
    adam.param_groups[0]["lr"] = opt.search.step_size
    torch.nn.functional.cross_entropy(reference(xb), yb).backward()
    adam.step()
    for a, b, trial in zip(model.parameters(), reference.parameters(), trial_points[-1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert torch.equal(a, trial)  # no move after the accepted trial


def test_cooldown_decays_the_step_linearly_over_the_last_share_of_the_run(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), total_steps=40, cooldown=0.25, max_interval=4)
    scales, searched = [], []
    for xb, yb in batches(cancer, 40):
        scales.append(opt.step_scale)
        opt.step(loss_closure(model, xb, yb))
        searched.append(opt.search.last_searched)
        assert opt.param_groups[0]["lr"] == pytest.approx(opt.search.step_size * opt.step_scale)
    assert scales[:30] == [1.0] * 30
    assert scales[30:] == pytest.approx([(10 - k) / 10 for k in range(10)])
    assert any(searched[30:])  # the line search goes on measuring the undecayed step size


@pytest.mark.parametrize("search_direction, searching", [("gradient", True), ("update", True), ("update", False)])
def test_cooldown_scales_the_step_taken_and_nothing_else(cancer, search_direction, searching):
    """The same state with and without the cool-down: the same search, the same step size found,
    and a displacement ``step_scale`` times as long."""
    model = mlp(dropout=0.0)
    settings = {"search_direction": search_direction, "warmup_searches": 3}
    opt = SaLSa(model.parameters(), total_steps=12, cooldown=1.0, **settings)
    data = list(batches(cancer, 8))
    for xb, yb in data[:7]:
        opt.step(loss_closure(model, xb, yb))
    twin = copy.deepcopy(model)
    uncooled = SaLSa(twin.parameters(), **settings)
    uncooled.load_state_dict(copy.deepcopy(opt.state_dict()))  # (state_dict() shares the moment tensors)
    for o in (opt, uncooled):  # make this step search, or not
        o.search.steps_since_search, o.search.interval = (o.search.interval, 1) if searching else (0, 10)
    scale = opt.step_scale
    assert scale == pytest.approx(5 / 12)
    start = [p.detach().clone() for p in model.parameters()]
    xb, yb = data[7]
    opt.step(loss_closure(model, xb, yb))
    uncooled.step(loss_closure(twin, xb, yb))
    assert opt.search.last_searched == uncooled.search.last_searched == searching
    assert opt.search.step_size == uncooled.search.step_size
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start):
        torch.testing.assert_close(p - p0, scale * (q - p0), rtol=1e-4, atol=1e-7)


def test_without_total_steps_there_is_no_cooldown(cancer):
    model = mlp()
    opt = SaLSa(model.parameters(), cooldown=0.5)
    train(model, opt, cancer, 20)
    assert opt.step_scale == 1.0 and opt.effective_step_size == opt.search.step_size
    opt.set_total_steps(30)
    assert opt.step_scale == pytest.approx(10 / 15)


def test_searching_along_the_previous_update_tests_it_on_this_batch_then_takes_the_adam_step(cancer):
    """search_direction="previous": trials lie along the update of the steps before, evaluated on
    this batch; the step taken is Adam's with this batch's gradient, at the step size found."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), search_direction="previous", warmup_searches=100, backtracking="constant")
    data = list(batches(cancer, 8))
    for xb, yb in data[:7]:
        opt.step(loss_closure(model, xb, yb))
    start = [p.detach().clone() for p in model.parameters()]
    step = opt.search.step
    previous = [(opt.state[p]["exp_avg"] / (1 - 0.9**step), (opt.state[p]["exp_avg_sq"] / (1 - 0.999**step)).sqrt() + 1e-8)
                for p in model.parameters()]
    trial_points = []
    xb, yb = data[7]

    def closure():
        if not torch.is_grad_enabled():
            trial_points.append([p.detach().clone() for p in model.parameters()])
        return torch.nn.functional.cross_entropy(model(xb), yb)

    reference = copy.deepcopy(model)
    adam = torch.optim.Adam(reference.parameters(), foreach=False)
    adam_state = adam.state_dict()
    for index, p in enumerate(model.parameters()):
        adam_state["state"][index] = {"step": torch.tensor(float(step)), "exp_avg": opt.state[p]["exp_avg"].clone(),
                                      "exp_avg_sq": opt.state[p]["exp_avg_sq"].clone()}
    adam.load_state_dict(adam_state)
    opt.step(closure)
    if not opt.search.last_searched:
        pytest.skip("this batch found the previous direction uphill (the search was postponed)")
    eta = opt.search.step_size
    for trial_k, trial in enumerate(trial_points):
        trial_eta = eta / opt.delta ** (len(trial_points) - 1 - trial_k)
        for x, w0, (m_hat, denom) in zip(trial, start, previous):
            torch.testing.assert_close(x, w0 - trial_eta * m_hat / denom, rtol=0, atol=1e-6)
    adam.param_groups[0]["lr"] = eta
    torch.nn.functional.cross_entropy(reference(xb), yb).backward()
    adam.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_loss_trend_grows_on_a_clear_fall_backs_off_on_a_clear_rise_and_holds_on_noise():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = SaLSa([w], loss_trend=True, grow_on="search", growth=1.1, delta=0.8, adaptive_frequency=False,
                init_step_size=1e-6, smoothing=False)

    def factors(offsets):  # the offsets move the loss from step to step; the steps barely do
        out = []
        for offset in offsets:
            before = opt.search.step_size
            opt.step(lambda: (w**2).sum() + offset)
            assert opt.search.last_searched and opt.search.last_backtracks == 0
            out.append(opt.search.step_size / before)
        return out

    assert factors([0.0]) == [pytest.approx(1.1)]  # nothing to compare with yet: grown
    # One change is its own noise estimate (a tie that rounding would decide): held, however large.
    assert factors([-5.0]) == [1.0]
    noise = factors([0.1 * (-1) ** k for k in range(30)])  # zero-mean step-to-step noise
    assert noise[-15:] == [1.0] * 15
    # (The average spans about ten steps: a trend shows once it outweighs the steps before.)
    assert factors([-0.5 * k for k in range(1, 21)])[-10:] == pytest.approx([1.1] * 10)
    # A rise shrinks by one notch of growth (not by delta, the backtracking factor).
    assert factors([-10 + 0.5 * k for k in range(1, 21)])[-10:] == pytest.approx([1 / 1.1] * 10)


@pytest.mark.parametrize("direction", [-1, 1])
def test_a_slow_trend_under_the_noise_accumulates_until_it_moves_the_step_size(direction):
    """Each step's change is 1/50 of the noise; the evidence keeps adding up against the loss at the
    last move, so the step size moves by one notch at a time, about twice as often for twice the slope."""

    def moves(slope: float) -> list[tuple[int, float]]:
        w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
        opt = SaLSa([w], grow_on="step", growth=1.1, adaptive_frequency=False, init_step_size=1e-6, smoothing=False)
        out = []
        for k in range(300):
            before = opt.search.step_size
            offset = 0.1 * (-1) ** k + direction * slope * k
            opt.step(lambda: (w**2).sum() + offset)
            if k > 0 and opt.search.step_size != before:
                out.append((k, opt.search.step_size / before))
        return out

    assert moves(0.0) == []  # noise alone: held
    slow, fast = moves(0.002), moves(0.004)
    notch = 1.1 if direction < 0 else 1 / 1.1
    assert [f for _, f in slow + fast] == pytest.approx([notch] * (len(slow) + len(fast)))
    def gaps(found):  # steps between moves, each move needing fresh evidence
        return [b - a for (a, _), (b, _) in zip(found, found[1:])]

    assert len(slow) >= 5 and min(gaps(slow) + gaps(fast)) > 1
    assert 1.7 <= sum(gaps(slow)) / len(gaps(slow)) / (sum(gaps(fast)) / len(gaps(fast))) <= 2.5


@pytest.mark.parametrize("samples, k", [(2, 1), (5, 3), (12, 10), (400, 7)])
def test_the_loss_trend_noise_is_the_variance_of_the_change_of_the_average(samples, k):
    """The closed form equals the sum of the squared weight changes of the bias-corrected EMA."""
    from salsa_hf.optimizer import LOSS_DECAY, _average_change_variance

    def weights(n):  # the bias-corrected EMA of n samples as weights on samples 1..samples
        w = [(1 - LOSS_DECAY) * LOSS_DECAY ** (n - i) / (1 - LOSS_DECAY**n) for i in range(1, n + 1)]
        return w + [0.0] * (samples - n)

    change = [a - b for a, b in zip(weights(samples), weights(samples - k))]
    assert _average_change_variance(samples, k) == pytest.approx(sum(c * c for c in change), rel=1e-9)


def test_the_interval_doubles_while_searches_agree_and_halves_when_one_backtracks(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), warmup_searches=0, max_interval=8, init_step_size=1e-4)
    seen = {"agreed": 0, "backtracked": 0}
    for step, (xb, yb) in enumerate(batches(cancer, 150)):
        if step == 75:
            opt.search.step_size = 1.0  # far too large: the next search must backtrack
        before = opt.search.interval
        opt.step(loss_closure(model, xb, yb))
        if opt.search.last_searched:
            if opt.search.last_backtracks:
                seen["backtracked"] += 1
                assert opt.search.interval == max(1, before // 2)
            else:
                seen["agreed"] += 1
                assert opt.search.interval == min(8, 2 * before)
        else:
            assert opt.search.interval == before
    assert seen["agreed"] >= 5 and seen["backtracked"] >= 1
