"""Built-in mechanisms; importing this package registers all of them."""

from mechanisms import softmax  # noqa: F401
from mechanisms import rala  # noqa: F401
from mechanisms import linear  # noqa: F401
