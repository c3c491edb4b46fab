"""Fit a bouncing ball's coefficient of restitution to observed bounce times.

    python examples/bouncing_ball.py [--bounces 6] [--steps 60]

A ball dropped from 1 m falls under gravity; at each impact its velocity is reversed and scaled
by the coefficient of restitution ``e``. One bounce is one event-terminated solve
(``nde.Event`` on the height, falling), and the ball is restarted from the ground with velocity
``-e·v``: a Python loop of solves, compiled once with ``eqx.filter_jit``. The impact times are
differentiable in ``e`` (implicit function theorem through every event), so plain gradient
descent recovers ``e`` from the observed times.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neuralode as nde

G = 9.81
GROUND = nde.Event(lambda t, y, g: y[0], direction=-1)


def fall(t, y, g):
    """``y = (height, velocity)``."""
    return jnp.stack([y[1], -g])


def impact_times(e, n_bounces: int, h0: float = 1.0):
    """The times of the first ``n_bounces`` impacts for restitution ``e``."""
    t = jnp.zeros(())
    y = jnp.stack([jnp.asarray(h0), 0.0])
    times = []
    for _ in range(n_bounces):
        sol = nde.odeint(fall, y, jnp.stack([t, t + 10.0]), G, event=GROUND, rtol=1e-6,
                         atol=1e-6)
        t = sol.event_time
        y = jnp.stack([0.0, -e * sol.event_y[1]])  # the bounce
        times.append(t)
    return jnp.stack(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bounces", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--true-e", type=float, default=0.8)
    opts = parser.parse_args(argv)

    observed = impact_times(opts.true_e, opts.bounces)
    print(f"observed impact times (e = {opts.true_e}):", [round(float(t), 4) for t in observed])

    # eqx.filter_jit rather than jax.jit: a failed solve then raises a short, readable error.
    @eqx.filter_jit
    def step(e, state):
        loss, grad = jax.value_and_grad(
            lambda e: jnp.mean((impact_times(e, opts.bounces) - observed) ** 2)
        )(e)
        updates, state = opt.update(grad, state)
        return optax.apply_updates(e, updates), state, loss

    opt = optax.adam(optax.exponential_decay(0.05, transition_steps=25, decay_rate=0.5))
    e = jnp.asarray(0.5)
    state = opt.init(e)
    for i in range(opts.steps):
        e, state, loss = step(e, state)
        if i % 10 == 0 or i == opts.steps - 1:
            print(f"step {i:3d}  e = {float(e):.5f}  loss = {float(loss):.3e}")
    print(f"fitted e = {float(e):.5f} (true {opts.true_e})")
    return {"e": float(e), "loss": float(loss)}


if __name__ == "__main__":
    main()
