"""Softmax attention, one registration per implementation, all sharing `base.SoftmaxBase`'s costs and mixer.

- `naive`: the readable reference (matmul, softmax, matmul) and `softmax_eager`, the family's reference;
- `sdpa`: PyTorch's scaled_dot_product_attention, free (`softmax_sdpa`) and pinned to one backend;
- `external`: kernels from optional packages (`softmax_flash`, `softmax_xformers`), absent-safe.

Importing this package registers all of them.
"""

from mechanisms.softmax import external, naive, sdpa  # noqa: F401
