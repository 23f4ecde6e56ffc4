"""AdaSmooth (Jun Lu, arXiv:2204.00825) as a Keras 3 optimizer.

RMSProp-like, but the decay of the squared-gradient average adapts per parameter to how
directionally it has been moving, measured by Kaufman's *effective ratio* over a window of M steps:

    ER_t   = |x_t - x_{t-M}| / Σ_{i<M} |x_{t-i} - x_{t-i-1}|        (0: oscillating, 1: trending)
    c_t    = (ρ2 - ρ1) · ER_t + (1 - ρ2)                             (ρ1 fast, ρ2 slow decay)
    E[g²]_t = c_t² · g_t² + (1 - c_t²) · E[g²]_{t-1}
    x_{t+1} = x_t - η · g_t / sqrt(E[g²]_t + ε)

The window is kept as "where the parameter stood when the window began" plus the path length
walked since, reset every M steps: two slots per variable instead of M past copies. With no
movement yet in a window (its first step) the ratio is taken as 1, the fast-adapting end.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="model_preparation")
class AdaSmooth(keras.optimizers.Optimizer):
    """AdaSmooth optimizer; ``fast_decay`` ρ1 < ``slow_decay`` ρ2, both in (0, 1)."""

    def __init__(
        self,
        learning_rate: float = 1e-3,
        fast_decay: float = 0.5,
        slow_decay: float = 0.99,
        window: int = 10,
        epsilon: float = 1e-6,
        name: str = "adasmooth",
        **kwargs,
    ) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 < fast_decay < slow_decay < 1.0:
            raise ValueError("AdaSmooth needs 0 < fast_decay < slow_decay < 1")
        if window < 1:
            raise ValueError("AdaSmooth window must be ≥ 1")
        self.fast_decay = fast_decay
        self.slow_decay = slow_decay
        self.window = int(window)
        self.epsilon = epsilon

    def build(self, var_list) -> None:
        if self.built:
            return
        super().build(var_list)
        self._mean_sq = [self.add_variable_from_reference(v, "mean_squared_grad") for v in var_list]
        self._start = [self.add_variable_from_reference(v, "window_start") for v in var_list]
        self._path = [self.add_variable_from_reference(v, "window_path") for v in var_list]

    def update_step(self, gradient, variable, learning_rate) -> None:
        index = self._get_variable_index(variable)
        mean_sq, start_v, path_v = self._mean_sq[index], self._start[index], self._path[index]
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)

        new_window = ops.equal(ops.mod(self.iterations, self.window), 0)
        start = ops.where(new_window, variable, start_v)
        path = ops.where(new_window, ops.zeros_like(path_v), path_v)
        net = ops.abs(ops.subtract(variable, start))
        ratio = ops.where(path > 0, ops.divide(net, ops.maximum(path, 1e-30)), ops.ones_like(path))
        c = (self.slow_decay - self.fast_decay) * ops.minimum(ratio, 1.0) + (1.0 - self.slow_decay)
        c2 = ops.square(c)
        new_mean_sq = c2 * ops.square(grad) + (1.0 - c2) * mean_sq
        step = lr * grad / ops.sqrt(new_mean_sq + self.epsilon)

        self.assign(mean_sq, new_mean_sq)
        self.assign(start_v, start)
        self.assign(path_v, path + ops.abs(step))
        self.assign_sub(variable, step)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "fast_decay": self.fast_decay,
                "slow_decay": self.slow_decay,
                "window": self.window,
                "epsilon": self.epsilon,
            }
        )
        return config
