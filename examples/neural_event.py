"""Learn an event function: where do particles leave an unknown region?

    python examples/neural_event.py [--steps 300]

In the spirit of Chen, Amos & Nickel, "Learning Neural Event Functions for Ordinary Differential
Equations" (ICLR 2021). Particles start near the origin and move in straight lines; each
trajectory is observed only through the time it leaves a region whose boundary is unknown (an
ellipse here). The event function is a small MLP ``g_θ(y)``, positive outside the region: every
solve stops where ``g_θ`` crosses zero, and the exit times are differentiated with respect to
``θ`` by the implicit function theorem, so the boundary is fitted by gradient descent on the
exit times alone.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neuralode as nde


class Boundary(eqx.Module):
    """``g(y) = |y|² - 1 + MLP(y)``: starts as the unit circle (the MLP's output layer is zero)."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        mlp = eqx.nn.MLP(2, 1, 32, 2, activation=jnp.tanh, key=key)
        self.mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                               (jnp.zeros_like(mlp.layers[-1].weight),
                                jnp.zeros_like(mlp.layers[-1].bias)))

    def __call__(self, t, y, velocity):
        return jnp.sum(y**2) - 1.0 + self.mlp(y)[0]


def move(t, y, velocity):
    return velocity


def true_exit_time(y0, velocity, a=1.5, b=0.8):
    """Exit time through the ellipse (x/a)² + (y/b)² = 1, in closed form."""
    scale = jnp.array([1 / a**2, 1 / b**2])
    qa = jnp.sum(scale * velocity**2)
    qb = 2 * jnp.sum(scale * y0 * velocity)
    qc = jnp.sum(scale * y0**2) - 1
    return (-qb + jnp.sqrt(qb**2 - 4 * qa * qc)) / (2 * qa)


def exit_time(boundary, y0, velocity):
    event = nde.Event(boundary, direction=1)  # leaves the region: g rises through zero
    sol = nde.odeint(move, y0, jnp.array([0.0, 10.0]), velocity, event=event, rtol=1e-6,
                     atol=1e-6)
    return sol.event_time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--trajectories", type=int, default=32)
    opts = parser.parse_args(argv)

    k_pos, k_dir, k_model = jax.random.split(jax.random.key(0), 3)
    n = opts.trajectories
    y0s = 0.2 * jax.random.normal(k_pos, (n, 2))
    angles = jnp.linspace(0.0, 2 * jnp.pi, n, endpoint=False) + 0.1 * jax.random.normal(
        k_dir, (n,))
    velocities = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    observed = jax.vmap(true_exit_time)(y0s, velocities)

    def loss_fn(boundary):
        predicted = jax.vmap(exit_time, in_axes=(None, 0, 0))(boundary, y0s, velocities)
        return jnp.mean((predicted - observed) ** 2)

    opt = optax.adam(3e-3)

    @eqx.filter_jit  # a failed solve then raises a short, readable error (not under jax.jit)
    def step(boundary, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(boundary)
        updates, state = opt.update(grads, state, boundary)
        return eqx.apply_updates(boundary, updates), state, loss

    boundary = Boundary(k_model)
    state = opt.init(eqx.filter(boundary, eqx.is_array))
    first = None
    for i in range(opts.steps):
        boundary, state, loss = step(boundary, state)
        first = float(loss) if first is None else first
        if i % 50 == 0 or i == opts.steps - 1:
            print(f"step {i:4d}  mean squared exit-time error {float(loss):.3e}")
    final = float(loss_fn(boundary))
    print(f"exit-time RMSE: {first ** 0.5:.4f} (unit circle) -> {final ** 0.5:.4f} (learned)")
    return {"initial_mse": first, "final_mse": final}


if __name__ == "__main__":
    main()
