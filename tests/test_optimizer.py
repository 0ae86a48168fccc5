"""The SaLSa optimizer on its own: the line search, its state, its robustness."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import re
import warnings

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from salsa_hf import PRESETS, SaLSa, SaLSaPaper


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
    assert line_search == dataclasses.asdict(opt.search)
    for key in ("step_size", "slope_avg", "curvature_avg", "interval", "steps_since_search"):
        assert key in line_search
    assert line_search["step"] == 25 and line_search["searches"] >= 10


def test_a_state_dict_of_the_previous_format_resumes_the_same_run(cancer):
    # Earlier versions saved ``average_weight`` (1.0 from the first search on, never read), and their
    # groups had no ``relative_step``.
    model, data = mlp(dropout=0.0), list(batches(cancer, 40))  # no dropout: the twins take turns
    opt = SaLSa(model.parameters())
    train(model, opt, cancer, 20)
    old_format = copy.deepcopy(opt.state_dict())  # loading would share the moments' tensors
    old_format["line_search"] = {**old_format["line_search"], "average_weight": 1.0}
    for group in old_format["param_groups"]:  # nor did groups carry ``relative_step``
        del group["relative_step"]
    twin_model = copy.deepcopy(model)
    twin = SaLSa(twin_model.parameters())
    twin.load_state_dict(old_format)
    assert twin.search == opt.search
    for xb, yb in data[20:]:
        opt.step(loss_closure(model, xb, yb))
        twin.step(loss_closure(twin_model, xb, yb))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin_model.parameters()))


def test_loading_a_foreign_state_dict_is_refused(cancer):
    model = mlp()
    adam_state = torch.optim.Adam(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="line_search"):
        SaLSa(model.parameters()).load_state_dict(adam_state)


def test_a_state_dict_saved_with_other_groups_is_refused_naming_both_groupings(cancer):
    """A LoRA checkpoint from before A got its own group has one group where the Trainer now builds
    two: refused with both groupings named, and the optimizer left as it was."""
    model = mlp()
    saved = SaLSa(model.parameters())
    saved.step(loss_closure(model, *next(batches(cancer, 1))))
    params = list(model.parameters())
    regrouped = SaLSa([{"params": params[:-1]}, {"params": params[-1:], "relative_step": 1 / 16}])
    before = copy.deepcopy(regrouped.state_dict())
    with pytest.raises(ValueError, match=r"param groups of \[4\] parameters, this optimizer of \[3, 1\]"):
        regrouped.load_state_dict(saved.state_dict())
    assert regrouped.state_dict() == before


@pytest.mark.parametrize("preconditioner", ["adam", "sgd"])
def test_foreach_path_equals_reference_path(cancer, preconditioner):
    models = [mlp(), mlp()]
    opts = [SaLSa(m.parameters(), preconditioner=preconditioner, foreach=f, weight_decay=0.01)
            for m, f in zip(models, (True, False))]
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
    sgd = SaLSa(model.parameters(), preconditioner="sgd")
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


def test_zero_loss_and_zero_gradient_divide_by_nothing():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = SaLSa([w])
    with pytest.warns(RuntimeWarning, match="zero gradient"):
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
        before = evaluations["trial"]

        def counting():
            evaluations["with_grad" if torch.is_grad_enabled() else "trial"] += 1
            return closure()

        opt.step(counting)
        if opt.search.searches > 1 and opt.search.last_searched:
            assert evaluations["trial"] - before == 1  # a later search spends one trial
    search = opt.search
    assert search.training_forwards == evaluations["with_grad"] == 50
    assert search.trial_forwards == evaluations["trial"]
    assert search.searches == 1 + search.grown + search.held + search.shrunk
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
    ("c", 0.0, "(0, 1)"), ("c", 1.0, "(0, 1)"), ("c", -0.5, "(0, 1)"), ("c", "0.5", "(0, 1)"),
    ("beta3", 1.0, "[0, 1)"), ("beta3", -0.1, "[0, 1)"),
    ("growth", 1.0, "> 1"), ("growth", float("inf"), "> 1"),
    ("init_step_size", 0.0, "> 0"), ("init_step_size", -1e-3, "> 0"), ("init_step_size", float("nan"), "> 0"),
    ("warmup_searches", -1, ">= 0"), ("warmup_searches", True, ">= 0"),
    ("betas", (1.0, 0.999), "[0, 1)"), ("betas", (0.9, -0.1), "[0, 1)"),
    ("eps", -1e-8, ">= 0"), ("weight_decay", -0.1, ">= 0"),
    ("preconditioner", "lion", "'adam', 'sgd'"),
    ("max_interval", 0, ">= 1"), ("max_interval", 2.5, ">= 1"),
    ("cooldown", 1.5, "[0, 1]"), ("cooldown", -0.1, "[0, 1]"),
    ("total_steps", 0, ">= 1"), ("total_steps", 10.5, ">= 1"),
    ("foreach", None, "True or False"),
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
    with pytest.raises(ValueError, match="'salsa', 'salsa_paper', 'salsa_sgd', 'sls', 'sls_sgd'.*'adamw'"):
        SaLSa.from_name("adamw", [w])
    with pytest.raises(ValueError, match=r"\['c'\]"):
        SaLSa([{"params": [w], "c": 0.5}])


@pytest.mark.parametrize("foreach", [True, False])
def test_a_group_at_half_the_step_size_runs_as_a_search_from_twice_the_start(cancer, foreach):
    # Every quantity of the search scales by a power of two, so the two runs are equal bit for bit:
    # the relative step changes where the step size lies, not the steps taken.
    halved, plain = mlp(), mlp()
    opts = [SaLSa([{"params": halved.parameters(), "relative_step": 0.5}], init_step_size=2e-4, weight_decay=0.01,
                  foreach=foreach),
            SaLSa(plain.parameters(), init_step_size=1e-4, weight_decay=0.01, foreach=foreach)]
    for xb, yb in batches(cancer, 40):
        for model, opt in zip((halved, plain), opts):
            torch.manual_seed(0)
            opt.step(loss_closure(model, xb, yb))
    assert all(torch.equal(a, b) for a, b in zip(halved.parameters(), plain.parameters()))
    assert opts[0].search.step_size == 2 * opts[1].search.step_size
    assert opts[0].search.backtracks == opts[1].search.backtracks > 0
    assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"]  # the rate each group steps at


def test_relative_steps_move_each_group_by_its_share(cancer):
    model = mlp(dropout=0.0)
    first, second = list(model[0].parameters()), list(model[3].parameters())
    opt = SaLSa([{"params": first}, {"params": second, "relative_step": 1 / 16}], warmup_searches=0)
    assert [group["lr"] for group in opt.param_groups] == [opt.init_step_size, opt.init_step_size / 16]  # from the start
    data = batches(cancer, 100)
    while True:  # run until the next step will not search: then it is Adam's, group by group
        xb, yb = next(data)
        opt.step(loss_closure(model, xb, yb))
        if opt.search.interval > opt.search.steps_since_search + 1:
            break
    rates = [group["lr"] for group in opt.param_groups]
    assert rates == [opt.search.step_size, opt.search.step_size / 16]
    reference = copy.deepcopy(model)
    adam = torch.optim.Adam([{"params": list(reference[0].parameters()), "lr": rates[0]},
                             {"params": list(reference[3].parameters()), "lr": rates[1]}], foreach=False)
    adam_state = adam.state_dict()
    for index, p in enumerate(first + second):
        adam_state["state"][index] = {"step": torch.tensor(float(opt.search.step)),
                                      "exp_avg": opt.state[p]["exp_avg"].clone(),
                                      "exp_avg_sq": opt.state[p]["exp_avg_sq"].clone()}
    adam.load_state_dict(adam_state)
    xb, yb = next(data)
    opt.step(loss_closure(model, xb, yb))
    adam.zero_grad()
    loss_closure(reference, xb, yb)().backward()
    adam.step()
    assert not opt.search.last_searched
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_the_papers_salsa_refuses_a_relative_step():
    with pytest.raises(ValueError, match="relative_step is SaLSa's, not the paper's.*got 0.5"):
        SaLSaPaper([{"params": [torch.nn.Parameter(torch.ones(2))], "relative_step": 0.5}])


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), "1/16"])
def test_a_relative_step_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ValueError, match=rf"relative_step must be a number > 0, got {re.escape(repr(bad))}"):
        SaLSa([{"params": [torch.nn.Parameter(torch.ones(2))], "relative_step": bad}])


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


def test_without_total_steps_there_is_no_cooldown(cancer):
    model = mlp()
    opt = SaLSa(model.parameters(), cooldown=0.5)
    train(model, opt, cancer, 20)
    assert opt.step_scale == 1.0 and opt.effective_step_size == opt.search.step_size
    opt.set_total_steps(30)
    assert opt.step_scale == pytest.approx(10 / 15)




# ---- the line search ------------------------------------------------------------------------------


def adam_direction(opt: SaLSa) -> list[torch.Tensor]:
    """``P m_hat`` recomputed from the optimizer's moments, independently of functional.py."""
    k = opt.search.step
    return [
        (opt.state[p]["exp_avg"] / (1 - 0.9**k)) / ((opt.state[p]["exp_avg_sq"] / (1 - 0.999**k)).sqrt() + 1e-8)
        for p in opt.param_groups[0]["params"]
    ]


class Recorder:
    """A closure that records the parameters and loss of every trial evaluation (no grad)."""

    def __init__(self, model, xb, yb, spoil=None):
        self.model, self.xb, self.yb, self.spoil = model, xb, yb, spoil
        self.trials: list[tuple[list[torch.Tensor], float]] = []

    def __call__(self):
        loss = torch.nn.functional.cross_entropy(self.model(self.xb), self.yb)
        if not torch.is_grad_enabled():
            if self.spoil is not None:
                loss = self.spoil(loss)
            self.trials.append(([p.detach().clone() for p in self.model.parameters()], float(loss)))
        return loss


def slope_of(model, opt, xb, yb) -> float:
    """``p = <g, P m_hat>`` at the current point, with the moments that include this gradient."""
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(xb), yb).backward()
    return sum(float((p.grad * d).sum()) for p, d in zip(model.parameters(), adam_direction(opt)))


@pytest.mark.parametrize("start", [1e-7, 1e-5, 1e-3, 1e-1])
def test_the_first_search_finds_the_armijo_boundary_from_any_start(cancer, start):
    """Doubling or halving from ``init_step_size``: the step size found passes the Armijo test on
    the batch and twice it fails, wherever the search started."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), init_step_size=start, c=0.5)
    xb, yb = next(batches(cancer, 1))
    w0 = [p.detach().clone() for p in model.parameters()]
    recorder = Recorder(model, xb, yb)
    loss = float(opt.step(recorder))
    found = opt.search.step_size
    assert opt.search.searches == 1 and opt.search.failed_searches == 0
    assert found == pytest.approx(start * 2.0 ** round(math.log2(found / start)))  # on the doubling grid

    probe = mlp(dropout=0.0)
    probe.load_state_dict({k: v for k, v in zip(dict(probe.named_parameters()), w0)})
    slope = slope_of(probe, opt, xb, yb)
    direction = adam_direction(opt)

    def decrease(x):
        with torch.no_grad():
            for p, p0, d in zip(probe.parameters(), w0, direction):
                p.copy_(p0 - x * d)
            return loss - float(torch.nn.functional.cross_entropy(probe(xb), yb))

    assert decrease(found) >= 0.5 * found * slope
    assert decrease(2 * found) < 0.5 * 2 * found * slope
    # The step taken is the step size found along the update (no cool-down without total_steps).
    for p, p0, d in zip(model.parameters(), w0, direction):
        torch.testing.assert_close(p, p0 - found * d, rtol=0, atol=1e-6)


def test_the_first_search_lands_on_one_scale_from_starts_six_decades_apart(cancer):
    found = []
    for start in (1e-7, 1e-4, 1e-1):
        model = mlp(dropout=0.0)
        opt = SaLSa(model.parameters(), init_step_size=start)
        xb, yb = next(batches(cancer, 1))
        opt.step(loss_closure(model, xb, yb))
        found.append(opt.search.step_size)
    assert max(found) / min(found) < 4  # one doubling grid each: within two notches of each other


def test_the_armijo_test_and_the_quadratic_boundary_say_the_same():
    """``boundary(p, q(D)) >= x`` exactly when ``D >= c x p``, for any decrease ``D``."""
    opt = SaLSa([torch.nn.Parameter(torch.ones(1))], c=0.3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        slope, x = float(torch.rand(1, generator=g)) * 10 + 1e-3, float(torch.rand(1, generator=g)) * 2 + 1e-3
        decrease = float(torch.randn(1, generator=g)) * slope * x
        loss = 5.0
        q = opt._curvature(loss, loss - decrease, x, slope)
        armijo = decrease >= 0.3 * x * slope
        assert (opt._boundary(slope, q) >= x) == armijo or math.isclose(decrease, 0.3 * x * slope, rel_tol=1e-9)
    assert opt._boundary(1.0, opt._curvature(1.0, float("nan"), 0.1, 1.0)) == 0.0  # a non-finite trial
    assert opt._curvature(1.0, 1.0, 0.1, 1.0) == 0.0  # an unchanged loss shows no curvature


def test_a_later_search_tries_one_notch_up_and_moves_the_step_size_one_notch(cancer):
    """One trial at ``growth`` times the step size; the smoothed averages of slope and curvature
    give the boundary ``2 (1 - c) p / q``: at or above the trial the step size grows to it, between
    the two it holds, below it it comes down one notch; the interval doubles on a hold, halves on
    a cut, stays on a growth."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), beta3=0.8, warmup_searches=60, growth=1.5)
    seen = set()
    for xb, yb in batches(cancer, 60):
        before = copy.copy(opt.search)
        w0 = [p.detach().clone() for p in model.parameters()]
        recorder = Recorder(model, xb, yb)
        loss = float(opt.step(recorder))
        after = opt.search
        if before.searches == 0:
            continue
        if after.uphill_searches > before.uphill_searches:  # momentum against this batch: no trial, Adam's step
            assert recorder.trials == [] and after.step_size == before.step_size
            continue
        assert len(recorder.trials) == 1
        trial_point, trial_loss = recorder.trials[0]
        x = before.step_size * 1.5
        probe = mlp(dropout=0.0)
        probe.load_state_dict({k: v for k, v in zip(dict(probe.named_parameters()), w0)})
        slope = slope_of(probe, opt, xb, yb)
        for t, p0, d in zip(trial_point, w0, adam_direction(opt)):
            torch.testing.assert_close(t, p0 - x * d, rtol=0, atol=1e-6)
        q = max(0.0, 2 * (slope * x - (loss - trial_loss)) / x**2)
        assert after.last_slope == pytest.approx(slope, rel=1e-4)  # what this batch alone said, for logging
        assert after.last_boundary == (math.inf if q == 0 else pytest.approx(2 * (1 - opt.c) * slope / q, rel=1e-3))
        slope_avg = 0.8 * before.slope_avg + 0.2 * slope
        curvature_avg = 0.8 * before.curvature_avg + 0.2 * q
        assert after.slope_avg == pytest.approx(slope_avg, rel=1e-4)
        assert after.curvature_avg == pytest.approx(curvature_avg, rel=1e-4, abs=1e-12)
        boundary = math.inf if curvature_avg == 0 else 2 * (1 - opt.c) * slope_avg / curvature_avg
        if boundary >= x * (1 + 1e-6):
            assert after.step_size == pytest.approx(x) and after.interval == before.interval
            seen.add("grow")
        elif before.step_size * (1 + 1e-6) <= boundary < x * (1 - 1e-6):
            assert after.step_size == before.step_size
            assert after.interval == min(opt.max_interval, 2 * before.interval)
            seen.add("hold")
        elif boundary < before.step_size * (1 - 1e-6):
            assert after.step_size == pytest.approx(before.step_size / 1.5)
            assert after.interval == max(1, before.interval // 2)
            seen.add("cut")
    assert seen == {"grow", "hold", "cut"}


def test_searches_grow_a_step_size_that_started_far_too_small(cancer):
    """With the first search's scale gone (say, a resumed run), the one-notch searches climb."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), warmup_searches=1000)
    train(model, opt, cancer, 20)
    found = opt.search.step_size
    opt.search.step_size = found / 100
    train(model, opt, cancer, 40)
    assert opt.search.step_size > found / 10


def test_clipping_between_prepare_step_and_step_is_undone_in_the_slope(cancer):
    """The Trainer clips after handing the step over: the test must measure the loss's own slope,
    so clipping the gradients by half changes nothing that the search decides."""
    xb, yb = next(batches(cancer, 1))
    results = []
    for clip in (1.0, 0.5):
        model = mlp(dropout=0.0)
        opt = SaLSa(model.parameters())
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.prepare_step(loss, loss_closure(model, xb, yb))
        for p in model.parameters():
            p.grad.mul_(clip)
        opt.step()
        results.append((opt.search.step_size, opt.search.slope_avg, opt.search.trial_forwards))
    assert results[0][0] == results[1][0] and results[0][2] == results[1][2]
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def test_a_non_finite_trial_in_a_later_search_cuts_and_takes_no_step(cancer):
    """One notch down and no step; the averages stay as they were (an infinite curvature in them
    would cut every later search), so the searches after it decide as before."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), warmup_searches=100)
    train(model, opt, cancer, 5)
    before = copy.copy(opt.search)
    xb, yb = next(batches(cancer, 1, seed=5))
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.step(Recorder(model, xb, yb, spoil=lambda loss: loss * float("inf")))
    assert opt.search.step_size == pytest.approx(before.step_size / opt.growth)
    assert opt.search.interval == max(1, before.interval // 2)
    assert (opt.search.slope_avg, opt.search.curvature_avg) == (before.slope_avg, before.curvature_avg)
    for p, p0 in zip(model.parameters(), w0):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-6)
    grown = opt.search.grown
    train(model, opt, cancer, 20)
    assert math.isfinite(opt.search.curvature_avg) and opt.search.grown > grown


def test_a_non_finite_trial_in_the_first_search_does_not_start_the_averages(cancer):
    """The first trial passes, the doubled one overflows: the step size is the first, and the
    averages start from it, not from the overflow."""
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters(), init_step_size=1e-4)
    xb, yb = next(batches(cancer, 1))
    count = {"trials": 0}

    def spoil(loss):
        count["trials"] += 1
        return loss * float("inf") if count["trials"] == 2 else loss

    opt.step(Recorder(model, xb, yb, spoil=spoil))
    search = opt.search
    assert search.step_size == 1e-4 and search.backtracks == 1 and search.trial_forwards == 2
    assert math.isfinite(search.curvature_avg) and search.slope_avg > 0


def test_a_first_search_with_no_passing_trial_takes_no_step_and_keeps_the_step_size(cancer):
    model = mlp(dropout=0.0)
    opt = SaLSa(model.parameters())
    xb, yb = next(batches(cancer, 1))
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.step(Recorder(model, xb, yb, spoil=lambda loss: loss + 1.0))  # every trial point looks worse
    search = opt.search
    assert search.failed_searches == 1 and search.searches == 0 and search.trial_forwards == 40
    assert search.step_size == opt.init_step_size
    for p, p0 in zip(model.parameters(), w0):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-6)
    train(model, opt, cancer, 3)  # the next step searches again
    assert search.searches >= 1


def test_an_exactly_zero_gradient_warns_once():
    w = torch.nn.Parameter(torch.ones(3))
    opt = SaLSa([w])
    with pytest.warns(RuntimeWarning, match="exactly zero gradient") as caught:
        for _ in range(5):
            opt.step(lambda: (w * 0.0).sum())
    assert sum("zero gradient" in str(r.message) for r in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.nn.Parameter(torch.ones(3))
        working = SaLSa([x])
        for _ in range(3):
            working.step(lambda: (x**2).sum())  # a real gradient: silent
