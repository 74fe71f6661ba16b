"""Local attention: Swin windows and NAT/DiNAT neighbourhoods, eager and through FlexAttention, and dense
FlexAttention (`softmax_flex`). geometry.py holds the rules, ops.py the operators, flex.py the FlexAttention
plumbing, mixers.py the authors' layers, registered.py the registrations and costs. Importing this registers them."""

from mechanisms.local import registered  # noqa: F401
