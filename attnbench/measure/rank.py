"""Rank metrics of attention mechanisms: numerical rank and effective rank, per head.

Two objects per head are measured, then averaged over batch and heads:
- the KV buffer, the fixed-size state every query reads (d x d for kernel linear attention and RALA;
  r x d with r = 2d, m random features, m landmarks or n agents for some mechanisms - their
  docstrings say which). A mechanism exposes it through an optional method
  `kv_buffer(q, k, v, *, grid[, rope]) -> (B, h, r, d)` taking the operator's raw inputs; a
  mixer whose operator is an nn.Module may expose it on the operator instead (learned parts);
  a mechanism without one falls back to that of its `reference` (same function, other backend).
  Softmax attention keeps all N keys - no fixed-size state - so it gets no kv_* rows: we do not
  substitute the N x N attention matrix, whose rank answers a different question.
- the output features, the operator's output (B, h, N, d) - at mixer level the operator inside the
  TokenMixer shell (before head merge, LePE, gate and proj); a mixer that is not a TokenMixer is
  measured on its output split into heads (the note says so). Caveat when comparing mechanisms:
  an operator with its own local branch (FLatten's, Agent's and PolaFormer's depthwise conv,
  InLine's predicted 3x3 residual) includes it in this output, while the shell's LePE of every
  mixer is outside it; such local branches raise the output's rank by design.

Definitions (singular values s_1 >= s_2 >= ... of one matrix M x N, computed in float64):
- numerical rank: #{s_i > rtol * s_1}, rtol = max(M, N) * eps(dtype) (numpy.linalg.matrix_rank's
  default; eps of the dtype the matrix was computed in), capped at 1e-2 - for 16-bit dtypes
  max(M, N) * eps exceeds 1 at a few hundred tokens, which would make every matrix rank 0.
- effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
  EUSIPCO 2007): exp(H(p)), p_i = s_i / sum_j s_j, H the Shannon entropy (natural log, 0 log 0 = 0);
  between 1 and the rank; d for any matrix with d equal singular values; 0 for a zero matrix.

Inputs (`rank_rows`): op level - q, k, v ~ N(0, 1) seeded exactly as the runner's op workload;
mixer level - the mechanism's mixer with seeded random init (as the runner's mixer workload) on
x ~ N(0, 1), or with weights from a RAVLT checkpoint (`weights="PATH"` or "PATH::layers.0.blocks.0.attn").
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from attnbench.dtypes import name_of
from attnbench.errors import AttnbenchError, CheckpointError
from attnbench.layers import Rope2d, TokenMixer, split_heads
from attnbench.registry import Mechanism, get
from attnbench.workload import TORCH_DTYPES, StaticRow, seeded_randn

__all__ = ["RANK_METRICS", "RankStats", "effective_rank", "kv_buffer_fn", "numerical_rank", "rank_rows", "rank_stats"]

RANK_METRICS = ("kv_rank", "kv_erank", "out_rank", "out_erank")
RTOL_CAP = 1e-2


# -- pure math ---------------------------------------------------------------------------------------
def singular_values(mats: Tensor) -> Tensor:
    """Singular values in float64, descending: (..., M, N) -> (..., min(M, N))."""
    return torch.linalg.svdvals(mats.detach().to(device="cpu", dtype=torch.float64))


def rank_rtol(rows: int, cols: int, dtype: torch.dtype) -> float:
    """Relative tolerance of the numerical rank: min(max(M, N) * eps(dtype), 1e-2)."""
    return min(max(rows, cols) * torch.finfo(dtype).eps, RTOL_CAP)


def numerical_rank(mats: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """#{s_i > rtol * s_max} per matrix of (..., M, N) -> (...,) float64; `dtype` sets eps (default mats')."""
    s = singular_values(mats)
    rtol = rank_rtol(mats.shape[-2], mats.shape[-1], dtype or mats.dtype)
    tol = s[..., :1] * rtol
    return ((s > tol) & (s > 0)).sum(dim=-1).to(torch.float64)


def effective_rank(mats: Tensor) -> Tensor:
    """exp(entropy of s / sum s) per matrix of (..., M, N) -> (...,) float64; 0 for a zero matrix."""
    s = singular_values(mats)
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(torch.float64).tiny)
    erank = torch.exp(-torch.xlogy(p, p).sum(dim=-1))
    return torch.where(total.squeeze(-1) > 0, erank, torch.zeros_like(erank))


@dataclass(frozen=True)
class RankStats:
    """Mean numerical rank and effective rank over `count` matrices of shape `shape`."""

    rank: float
    erank: float
    rtol: float
    count: int
    shape: tuple[int, int]


def rank_stats(t: Tensor, *, dtype: torch.dtype | None = None) -> RankStats:
    """Average over the leading dims (batch, heads) of per-matrix ranks of t (..., M, N)."""
    mats = t.reshape(-1, t.shape[-2], t.shape[-1])
    dtype = dtype or t.dtype
    return RankStats(
        rank=float(numerical_rank(mats, dtype=dtype).mean()),
        erank=float(effective_rank(mats).mean()),
        rtol=rank_rtol(mats.shape[-2], mats.shape[-1], dtype),
        count=mats.shape[0],
        shape=(mats.shape[-2], mats.shape[-1]),
    )


# -- KV buffers and operator capture -----------------------------------------------------------------
def kv_buffer_fn(mech: Mechanism) -> Callable[..., Tensor] | None:
    """The mechanism's `kv_buffer`, else its reference's (same function), else None."""
    fn = getattr(mech, "kv_buffer", None)
    if fn is None and mech.reference:
        try:
            fn = getattr(get(mech.reference), "kv_buffer", None)
        except AttnbenchError:
            fn = None
    return fn


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _call_kv(fn: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor, grid, rope, **options: Any) -> Tensor:
    if rope is not None and _accepts(fn, "rope"):
        options["rope"] = rope
    return fn(q, k, v, grid=grid, **options)


def _op_options(mech: Mechanism, options: dict[str, Any]) -> dict[str, Any]:
    """The options an op-level call takes: the mechanism's own (shell options gate/lepe dropped)."""
    own = {key: value for key, value in options.items() if key not in ("gate", "lepe")}
    missing = [key for key in own if not _accepts(mech.op, key)]
    if missing:
        raise AttnbenchError(f"{mech.name}: its op takes no options {missing}; set them for the mixer level only")
    return own


@contextmanager
def _record_operator(module: nn.Module) -> Iterator[dict[str, Any]]:
    """Record the inputs and output of a TokenMixer's operator during the forwards in the block."""
    record: dict[str, Any] = {}
    if not isinstance(module, TokenMixer):
        yield record
        return
    if "operator" in module._modules:
        owner = module.operator

        def hook(mod, args, kwargs, output):
            record.update(q=args[0], k=args[1], v=args[2], grid=kwargs["grid"], rope=kwargs.get("rope"),
                          out=output, owner=mod)  # fmt: skip

        handle = owner.register_forward_hook(hook, with_kwargs=True)
        try:
            yield record
        finally:
            handle.remove()
        return
    original = module._operator

    def recording(q, k, v, *, grid, rope=None):
        out = original(q, k, v, grid=grid, rope=rope)
        record.update(q=q, k=k, v=v, grid=grid, rope=rope, out=out, owner=None)
        return out

    module._operator = recording
    try:
        yield record
    finally:
        module._operator = original


# -- mixers with checkpoint weights ------------------------------------------------------------------
_BLOCK = re.compile(r"^(layers\.(\d+)\.)blocks\.(\d+)\.attn\.qkvo\.weight$")


def _checkpoint_mixer(mech: Mechanism, weights: str, dim: int, heads: int, options: dict[str, Any]):
    """(mixer with the weights of one RAVLT block's `attn`, that stage's Rope2d, a description)."""
    from attnbench.models.checkpoint import PREFIX, read_checkpoint, select_state_dict

    path, _, prefix = weights.partition("::")
    sd, _ = select_state_dict(read_checkpoint(path), path=path)
    sd = {key[len(PREFIX) :] if key.startswith(PREFIX) else key: value for key, value in sd.items()}
    found = [(int(m.group(2)), int(m.group(3)), m.group(1)) for m in map(_BLOCK.match, sd) if m]
    if prefix:
        prefix = prefix.rstrip(".") + "."
        stage_prefix = prefix.split("blocks.")[0]
    else:
        matching = sorted(f for f in found if sd[f"{f[2]}blocks.{f[1]}.attn.qkvo.weight"].shape[1] == dim)
        if not matching:
            raise CheckpointError(f"checkpoint {path!r} has no RAVLT block whose mixer has {dim} channels")
        stage, block, stage_prefix = matching[0]
        prefix = f"{stage_prefix}blocks.{block}.attn."
    sub = {key[len(prefix) :]: value for key, value in sd.items() if key.startswith(prefix)}
    if not sub:
        raise CheckpointError(f"checkpoint {path!r} has no entries under {prefix!r}")
    module = mech.mixer(dim, heads, **options)
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{mech.name} mixer cannot take the weights under {prefix!r} of {path!r}: {str(exc).splitlines()[0]}"
        ) from None
    rope = Rope2d(dim // heads)
    angle = sd.get(f"{stage_prefix}RoPE.angle")
    if angle is not None:
        rope.angle.copy_(angle)
    return module, rope, f"mixer weights {prefix.rstrip('.')} of {path}"


# -- public entry point ------------------------------------------------------------------------------
def _rows(kind: str, stats: RankStats, dtype: torch.dtype, context: str) -> list[StaticRow]:
    rows_, cols = stats.shape
    capped = " (capped)" if stats.rtol == RTOL_CAP else ""
    note = (
        f"{context}; {kind} per head {rows_}x{cols}, mean over {stats.count} (batch x heads); fp64 SVD; "
        f"rank tol = {stats.rtol:.3g} * s_max (max(M,N)*eps({name_of(dtype)}){capped}); "
        "erank = exp(entropy of s/sum(s)) (Roy & Vetterli 2007)"
    )
    prefix = "kv" if kind == "KV buffer" else "out"
    return [
        StaticRow(f"{prefix}_rank", stats.rank, "rank", note=note),
        StaticRow(f"{prefix}_erank", stats.erank, "rank", note=note),
    ]


def rank_rows(
    mech: Mechanism,
    *,
    level: str,
    batch: int,
    heads: int,
    height: int,
    width: int,
    dim: int,
    dtype: str,
    device: str | torch.device,
    options: dict[str, Any] | None = None,
    weights: str = "random",
    seed: int = 0,
) -> list[StaticRow]:
    """Rows kv_rank, kv_erank (where the mechanism has a KV buffer), out_rank, out_erank (unit "rank").

    level "op": q, k, v ~ N(0, 1), (B, h, N, dim/heads), seeds seed..seed+2 (as the runner's op
    workload). level "mixer": torch.manual_seed(seed), then mech.mixer(dim, heads, **options) (as the
    runner's mixer workload) or the mixer loaded from a checkpoint (`weights`), on x ~ N(0, 1)
    (B, dim, H, W) with seed + 10, RoPE tables from Rope2d. Everything runs under torch.no_grad().
    """
    options = dict(options or {})
    tdtype = TORCH_DTYPES[dtype]
    grid, n = (height, width), height * width
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    head_dim = dim // heads
    kv: Tensor | None = None
    with torch.no_grad():
        if level == "op":
            if weights != "random":
                raise AttnbenchError("weights= applies to mixer level only (op level has no weights)")
            own = _op_options(mech, options)
            q, k, v = (seeded_randn((batch, heads, n, head_dim), dtype=tdtype, device=device, seed=seed + i)
                       for i in range(3))  # fmt: skip
            out = mech.op(q, k, v, grid=grid, **own)  # (B, h, N, d)
            fn = kv_buffer_fn(mech)
            if fn is not None:
                kv = _call_kv(fn, q, k, v, grid, None, **own)
            context = f"op level, q,k,v ~ N(0,1) seeds {seed}-{seed + 2}, {dtype}"
        elif level == "mixer":
            if weights == "random":
                torch.manual_seed(seed)
                module, rope_mod = mech.mixer(dim, heads, **options), Rope2d(head_dim)
                source = f"random-init mixer (torch.manual_seed({seed}))"
            else:
                module, rope_mod, source = _checkpoint_mixer(mech, weights, dim, heads, options)
            module = module.to(device=device, dtype=tdtype).eval()
            rope = rope_mod.to(device=device, dtype=tdtype)(grid)  # (N, d) x2
            x = seeded_randn((batch, dim, height, width), dtype=tdtype, device=device, seed=seed + 10)
            with _record_operator(module) as record:
                y = module(x, rope)  # (B, C, H, W)
            if "out" in record:
                out = record["out"]
                owner_fn = getattr(record["owner"], "kv_buffer", None)
                fn = owner_fn or kv_buffer_fn(mech)
                if fn is not None:
                    kv = _call_kv(fn, record["q"], record["k"], record["v"], record["grid"], record["rope"])
                context = f"{source}, x ~ N(0,1) seed {seed + 10}, {dtype}; out = operator output"
            else:
                out = split_heads(y, 1, heads)[0]  # (B, h, N, d)
                context = f"{source}, x ~ N(0,1) seed {seed + 10}, {dtype}; out = mixer output (no shell operator)"
        else:
            raise ValueError(f"rank metrics exist for levels op and mixer, not {level!r}")
    rows: list[StaticRow] = []
    if kv is not None:
        rows += _rows("KV buffer", rank_stats(kv, dtype=tdtype), tdtype, context)
    rows += _rows("output", rank_stats(out, dtype=tdtype), tdtype, context)
    return rows
