"""Built-in mechanisms; importing this package registers all of them."""

from mechanisms import (
    linear,  # noqa: F401
    local,  # noqa: F401
    rala,  # noqa: F401
    softmax,  # noqa: F401
)
