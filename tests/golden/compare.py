"""What the golden tests share: float32 inputs from the JSON and a scale-aware comparison."""

import jax.numpy as jnp
import numpy as np


def arr(x):
  return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


def close(actual, expected, rtol=1e-5):
  """Relative to the array's own scale (entries near 0 get atol = rtol * max|expected|)."""
  expected = np.asarray(expected, np.float64)
  atol = rtol * max(1.0, float(np.max(np.abs(expected)))) if expected.size else 0.0
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)
