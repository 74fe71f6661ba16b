"""The "linear" family: earlier linear / sub-quadratic attention mechanisms, one module each."""

from mechanisms.linear import (
    agent,  # noqa: F401
    cosformer,  # noqa: F401
    efficient_attention,  # noqa: F401
    flatten,  # noqa: F401
    hydra,  # noqa: F401
    inline,  # noqa: F401
    linear_elu,  # noqa: F401
    linear_relu,  # noqa: F401
    mlla,  # noqa: F401
    nystromformer,  # noqa: F401
    performer,  # noqa: F401
    polaformer,  # noqa: F401
)
