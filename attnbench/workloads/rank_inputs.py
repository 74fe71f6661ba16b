"""What the rank metrics measure, built from a case's inputs: its KV buffer and its operator output.

Two objects per head (the maths, averaged over batch and heads, is attnbench.measure.rank):
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

Inputs, from the case's factory (attnbench.workloads.inputs, the same as the timed workload's): op level
q, k, v ~ N(0, 1) (B, h, N, d), seeds seed..seed+2; mixer level the mechanism's mixer with seeded random
init, or with weights from a RAVLT checkpoint (`weights="PATH"` or "PATH::layers.0.blocks.0.attn"), on
x ~ N(0, 1) (B, C, H, W), seed + 10, RoPE tables from Rope2d. Everything runs under torch.no_grad().
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from attnbench.errors import AttnbenchError, CheckpointError
from attnbench.layers import Rope2d, TokenMixer, split_heads
from attnbench.registry import Mechanism, get
from attnbench.workloads.inputs import X_SEED, CaseInputs


@dataclass
class RankTensors:
    out: Tensor  # (B, h, N, d): the operator's output
    kv: Tensor | None  # (B, h, r, d): the KV buffer, None for mechanisms without one
    context: str  # what was measured, for the rows' note


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
            record.update(
                q=args[0], k=args[1], v=args[2], grid=kwargs["grid"], rope=kwargs.get("rope"), out=output, owner=mod
            )

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


def rank_tensors(inputs: CaseInputs, *, options: dict[str, Any] | None = None, weights: str = "random") -> RankTensors:
    """The case's operator output and KV buffer; `options` configure the mechanism (default the case's),
    `weights` "random" (seeded init) or a RAVLT checkpoint (mixer level)."""
    mech, s, seed = inputs.mech, inputs.shape, inputs.seed
    options = dict(inputs.options if options is None else options)
    kv: Tensor | None = None
    with torch.no_grad():
        if inputs.level == "op":
            if weights != "random":
                raise AttnbenchError("weights= applies to mixer level only (op level has no weights)")
            own = _op_options(mech, options)
            q, k, v = inputs.qkv()  # (B, h, N, d) each
            out = mech.op(q, k, v, grid=inputs.grid, **own)  # (B, h, N, d)
            fn = kv_buffer_fn(mech)
            if fn is not None:
                kv = _call_kv(fn, q, k, v, inputs.grid, None, **own)
            context = f"op level, q,k,v ~ N(0,1) seeds {seed}-{seed + 2}, {inputs.dtype}"
        elif inputs.level == "mixer":
            if weights == "random":
                module, rope_mod = inputs.mixer(options), Rope2d(s.head_dim)
                source = f"random-init mixer (torch.manual_seed({seed}))"
            else:
                module, rope_mod, source = _checkpoint_mixer(mech, weights, s.dim, s.heads, options)
            module = module.to(device=inputs.device, dtype=inputs.torch_dtype).eval()
            rope = inputs.rope(rope_mod)  # (N, d) x2
            x = inputs.x()  # (B, C, H, W)
            with _record_operator(module) as record:
                y = module(x, rope)  # (B, C, H, W)
            where = f"{source}, x ~ N(0,1) seed {seed + X_SEED}, {inputs.dtype}"
            if "out" in record:
                out = record["out"]
                owner_fn = getattr(record["owner"], "kv_buffer", None)
                fn = owner_fn or kv_buffer_fn(mech)
                if fn is not None:
                    kv = _call_kv(fn, record["q"], record["k"], record["v"], record["grid"], record["rope"])
                context = f"{where}; out = operator output"
            else:
                out = split_heads(y, 1, s.heads)[0]  # (B, h, N, d)
                context = f"{where}; out = mixer output (no shell operator)"
        else:
            raise ValueError(f"rank metrics exist for levels op and mixer, not {inputs.level!r}")
    return RankTensors(out, kv, context)
