"""2D RoPE against hand-computed values, and the head split/merge layout of docs/rala.md."""

from __future__ import annotations

import math

import torch

from attnbench.layers import Rope2d, apply_rope, merge_heads, rope_tables, rotate_pairs, split_heads


def test_angle_buffer_matches_spec_formula():
    rope = Rope2d(8)  # d/4 = 2 base angles: 1/10000**0 = 1, 1/10000**1 = 1e-4
    assert rope.angle.dtype == torch.float32
    torch.testing.assert_close(rope.angle, torch.tensor([1.0, 1.0, 1e-4, 1e-4]))


def test_tables_hand_computed_token():
    sin, cos = Rope2d(8)((2, 3))  # H=2, W=3 -> 6 tokens, d=8
    assert sin.shape == cos.shape == (6, 8)
    n = 1 * 3 + 2  # row 1, col 2
    theta = [1 * 1.0, 1 * 1.0, 1 * 1e-4, 1 * 1e-4, 2 * 1.0, 2 * 1.0, 2 * 1e-4, 2 * 1e-4]
    torch.testing.assert_close(sin[n], torch.tensor([math.sin(t) for t in theta]))
    torch.testing.assert_close(cos[n], torch.tensor([math.cos(t) for t in theta]))


def test_rotation_of_one_pair_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert rotate_pairs(x).tolist() == [[-2.0, 1.0, -4.0, 3.0]]
    theta = torch.tensor([[0.3, 0.3, 0.7, 0.7]])
    y = apply_rope(x, theta.sin(), theta.cos())
    c, s = math.cos(0.3), math.sin(0.3)
    expected0 = [1 * c - 2 * s, 2 * c + 1 * s]  # a 2D rotation of (1, 2) by 0.3 rad
    torch.testing.assert_close(y[0, :2], torch.tensor(expected0))


def test_tables_built_in_buffer_dtype():
    rope = Rope2d(8).to(torch.float64)
    sin, _ = rope((4, 4))
    assert sin.dtype == torch.float64
    sin32, _ = rope_tables(4, 4, 8)
    torch.testing.assert_close(sin.float(), sin32)


def test_split_merge_layout():
    b, h, d, height, width = 2, 3, 4, 2, 5
    c = h * d
    t = torch.arange(b * 3 * c * height * width, dtype=torch.float32).reshape(b, 3 * c, height, width)
    parts = split_heads(t, 3, h)  # (3, B, h, N, d)
    m, head, j, row, col = 2, 1, 3, 1, 4  # channel (m*h + head)*d + j, token row*W + col
    assert parts[m, 1, head, row * width + col, j] == t[1, (m * h + head) * d + j, row, col]
    torch.testing.assert_close(merge_heads(parts[2], height, width), t[:, 2 * c :])
