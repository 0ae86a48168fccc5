"""Where does the Armijo test put the step size? A probe at a point of an AdamW run of a lab workload.

    python scripts/probe_boundary.py mlp_digits 1e-2 100     # workload, AdamW rate, steps before the probe

Trains the workload's model with AdamW at the given rate (the lab's batches and dropout masks, no
decay), then on the next 8 batches measures the Armijo ratio ``(f(w) - f(w + x d)) / (x p)`` of
the loss along Adam's update ``d = -P m_hat`` for step sizes ``x`` from rate/64 to rate*64, where
``p`` is the slope of the loss's own (unclipped) gradient: along the update with this batch's
gradient in it (what SaLSa tests), and along the update of the steps before (this batch did not
choose it). The ratio is 1 for small steps and falls with the curvature; the Armijo test with
constant ``c`` accepts the steps whose ratio is at least ``c``. docs/lab.md, fifth round.
"""

from __future__ import annotations

import sys

import torch

import lab


def main(workload: str, rate: float, warm: int) -> None:
    torch.set_num_threads(1)
    task = lab.WORKLOADS[workload].build(0)
    model, batches, loss_fn = task["model"], task["batches"], task["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=rate, weight_decay=0.0)
    model.train()
    for step in range(warm):
        torch.manual_seed(step)
        opt.zero_grad()
        loss_fn(model, batches[step]).backward()
        torch.nn.utils.clip_grad_norm_(params, lab.MAX_GRAD_NORM)
        opt.step()
    sizes = [rate * 2.0**j for j in range(-6, 7)]

    def update() -> list[torch.Tensor]:
        directions = []
        for p in params:
            state = opt.state[p]
            k = float(state["step"])
            m_hat, v_hat = state["exp_avg"] / (1 - 0.9**k), state["exp_avg_sq"] / (1 - 0.999**k)
            directions.append(-m_hat / (v_hat.sqrt() + 1e-8))
        return directions

    @torch.no_grad()
    def loss_along(direction, x, batch, seed) -> float:
        for p, d in zip(params, direction):
            p.add_(d, alpha=x)
        torch.manual_seed(seed)
        value = float(loss_fn(model, batch))
        for p, d in zip(params, direction):
            p.sub_(d, alpha=x)
        return value

    def gradient(batch, seed) -> tuple[float, list[torch.Tensor]]:
        opt.zero_grad()
        torch.manual_seed(seed)
        loss = loss_fn(model, batch)
        loss.backward()
        return float(loss), [p.grad.clone() for p in params]

    measured = {"this batch's update": [], "the earlier update": []}
    for i in range(8):
        batch, seed = batches[warm + i], warm + i
        earlier = update()
        loss, g = gradient(batch, seed)
        slope = -sum(float((gi * di).sum()) for gi, di in zip(g, earlier))
        measured["the earlier update"].append((slope, [loss - loss_along(earlier, x, batch, seed) for x in sizes]))
        torch.nn.utils.clip_grad_norm_(params, lab.MAX_GRAD_NORM)
        opt.step()  # this batch's gradient joins the moments; the probe point is the point after it
        loss, g = gradient(batch, seed)
        own = update()
        slope = -sum(float((gi * di).sum()) for gi, di in zip(g, own))
        measured["this batch's update"].append((slope, [loss - loss_along(own, x, batch, seed) for x in sizes]))
    print(f"{workload}, AdamW {rate:g}, after {warm} steps: Armijo ratio (mean decrease / (x * mean slope)) per step size x")
    for kind, rows in measured.items():
        mean_slope = sum(s for s, _ in rows) / len(rows)
        ratios = [sum(d[j] for _, d in rows) / len(rows) / (x * mean_slope) for j, x in enumerate(sizes)]
        print(f"  along {kind} (mean slope {mean_slope:.3g}, {sum(s > 0 for s, _ in rows)} of 8 batches downhill):")
        print("    " + "  ".join(f"{x:.1e}: {r:.2f}" for x, r in zip(sizes, ratios)))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
