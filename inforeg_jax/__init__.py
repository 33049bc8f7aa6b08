"""inforeg-jax: InfoReg (CVPR 2025) and balanced multimodal learning in JAX/Flax."""

from inforeg_jax.regulation import (InfoRegState, find_inforeg_state, inforeg_diagnostics,
                                    inforeg_transform)

__all__ = ["InfoRegState", "find_inforeg_state", "inforeg_diagnostics", "inforeg_transform"]
__version__ = "0.1.0"
