"""How a case, a shape and a group of cases are named on screen: one place for plan, summary, gate, compare,
analysis and the report tables.

Each function takes a mapping of results-row fields (a row's `to_dict()`, or a planned case's fields with
`pass` for `pass_`); missing, None, NaN and NA fields are left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_CASE_HEAD = ("mechanism", "level", "variant", "pass", "dtype")


def has_value(v: Any) -> bool:
    """Not None, NaN, NA or ''."""
    if v is None or type(v).__name__ == "NAType":  # pandas.NA, without importing pandas
        return False
    return not (isinstance(v, float) and math.isnan(v)) and v != ""


def text(v: Any) -> str:
    """str(v), or '' where `v` has no value."""
    return str(v) if has_value(v) else ""


def case_label(fields: Mapping[str, Any], *, detail: bool = False) -> str:
    """'rala_eager op fwd fp32 b8 14x14' (with the variant where there is one); `detail` adds heads and head
    dim ('h2 d32') and the hardware kind ('@a100'). Falls back to the case_id when nothing else is known."""
    parts = [text(fields.get(k)) for k in _CASE_HEAD]
    if has_value(fields.get("batch")):
        parts.append(f"b{fields['batch']}")
    if has_value(fields.get("height")) and has_value(fields.get("width")):
        parts.append(f"{fields['height']}x{fields['width']}")
    if detail:
        if fields.get("level") != "model":
            parts += [f"{p}{fields[k]}" for p, k in (("h", "heads"), ("d", "head_dim")) if has_value(fields.get(k))]
        if has_value(fields.get("hardware")):
            parts.append(f"@{fields['hardware']}")
    return " ".join(p for p in parts if p) or text(fields.get("case_id"))


def mechanism_label(fields: Mapping[str, Any], *, size: bool = False) -> str:
    """A table row: 'rala_eager', or 'rala_eager [ravlt_t]' where the case has a variant (the model at level
    model, a configuration such as '+lepe+gate' at op/mixer level); `size` adds a model's image size (' @224')."""
    text = str(fields["mechanism"]) + (f" [{fields['variant']}]" if has_value(fields.get("variant")) else "")
    if size and fields.get("level") == "model":
        text += f" @{fields['height']}"
    return text


def shape_label(fields: Mapping[str, Any]) -> str:
    """A case's shape in a table column: '14x14' or '16x24' (token grid HxW); 'ravlt_t@224' at model level.
    Every table format (terminal, Markdown, LaTeX, CSV, HTML) and every table (summary, pivots, speedups) uses
    this one convention."""
    if fields["level"] == "model":
        return f"{fields['variant']}@{fields['height']}"
    return f"{int(fields['height'])}x{int(fields['width'])}"


def group_label(group: Mapping[str, Any]) -> str:
    """'op fwd fp32 cpu, batch 1, heads 1, dim 64' (a shape 'HxW' where the group has one)."""
    head = [str(group[k]) for k in ("level", "variant", "pass", "dtype", "device") if has_value(group.get(k))]
    tail = [f"{k} {group[k]}" for k in ("batch", "heads", "dim") if has_value(group.get(k))]
    if has_value(group.get("height")):
        tail.insert(0, f"{group['height']}x{group['width']}")
    return ", ".join([" ".join(head), *tail])


def group_slug(group: Mapping[str, Any]) -> str:
    """File-name part of a group: 'op-fwd-fp32-cpu-b1-h1-d64'."""
    present = {k: v for k, v in group.items() if has_value(v)}
    parts = [str(present[k]) for k in ("level", "variant", "pass", "dtype", "device") if k in present]
    parts += [f"{p}{present[k]}" for k, p in (("batch", "b"), ("heads", "h"), ("dim", "d")) if k in present]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("_")


def row_order(rows: Sequence[str], families: Sequence[Any], missing: Sequence[bool]) -> list[str]:
    """A table's rows in reading order, from one entry per cell (`rows` repeat): rows with a value in some
    cell first, then rows with none (skipped or failed everywhere); within each, by family, then by label.
    A run's shuffled case order never decides how a table reads."""
    empty: dict[str, bool] = {}
    family: dict[str, str] = {}
    for row, fam, none in zip(rows, families, missing):
        empty[row] = empty.get(row, True) and bool(none)
        if has_value(fam):
            family.setdefault(row, str(fam))
    return sorted(empty, key=lambda row: (empty[row], family.get(row, ""), row))


_PASS_WORDS = {"fwd": "forward", "fwd_bwd": "forward and backward", "bwd": "backward"}
_DEVICE_WORDS = {"cpu": "CPU", "cuda": "GPU"}


def level_words(group: Mapping[str, Any]) -> str:
    """What a group measures, in words: 'the attention operator', 'the token mixer (+lepe)', 'the ravlt_t model'."""
    level, variant = text(group.get("level")), text(group.get("variant"))
    if level == "model":
        return f"the {variant} model" if variant else "the model"
    what = {"op": "the attention operator", "mixer": "the token mixer"}.get(level, f"the {level}" if level else "")
    return f"{what} ({variant})" if variant and what else what


def setting_words(group: Mapping[str, Any]) -> str:
    """A group's setting in words: 'fp32 on CPU, batch 1, 1 head of 64 channels'."""
    device = text(group.get("device"))
    head = " on ".join(p for p in (text(group.get("dtype")), _DEVICE_WORDS.get(device, device)) if p)
    parts = [head] if head else []
    if has_value(group.get("batch")):
        parts.append(f"batch {group['batch']}")
    if has_value(group.get("height")) and has_value(group.get("width")):
        parts.append(f"grid {group['height']}x{group['width']}")
    heads, head_dim = group.get("heads"), group.get("head_dim")
    if has_value(heads) and group.get("level") != "model":
        each = f" of {head_dim} channels" if has_value(head_dim) else ""
        parts.append(f"{heads} head{'' if str(heads) == '1' else 's'}{each}")
    return ", ".join(parts)


def words_title(what: str, group: Mapping[str, Any], lead: str = "") -> str:
    """A figure title or caption in words: 'Forward latency of the attention operator, fp32 on CPU, batch 1,
    1 head of 64 channels' for what='latency'; `lead` goes before the pass ('Median forward latency ...')."""
    pass_ = _PASS_WORDS.get(text(group.get("pass")), text(group.get("pass")))
    head = " ".join(p for p in (lead, pass_, what) if p)
    head = head[:1].upper() + head[1:]
    of = level_words(group)
    setting = setting_words(group)
    return head + (f" of {of}" if of else "") + (f", {setting}" if setting else "")
