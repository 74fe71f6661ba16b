"""Suite -> cases: the cartesian product of the sweep axes, with skips and their reasons.

Pure planning: nothing here touches a device. A case that cannot run (mechanism unavailable,
level not implemented, dtype or head dim unsupported, impossible shape) is still a case: it
becomes `skipped` rows with the reason in `message`, so a table shows why a cell is empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from attnbench import registry
from attnbench.labels import case_label
from attnbench.suite import Suite, expand_mechanisms
from attnbench.suite_schema import MODEL_SETTINGS, default


@dataclass(frozen=True)
class Case:
    suite: str
    mechanism: str
    family: str
    backend: str
    level: str
    variant: str  # level model: the model and its settings (`model_variant`), else mechanism.variant(level, options)
    pass_: str
    device: str
    dtype: str
    batch: int
    height: int  # token grid (op/mixer) or image size (model)
    width: int
    heads: int | None
    head_dim: int | None
    dim: int | None
    options: tuple[tuple[str, Any], ...] = ()
    skip: str | None = field(default=None, compare=False)
    hardware: str = ""  # suite key `hardware`: the kind this copy of the case runs on (Ray executor)

    @property
    def tokens(self) -> int:
        """Tokens per item: H*W at op/mixer level; at model level the stage-1 grid (H/4 x W/4) of the
        RAVLT stem, the grid the stage-1/2 mixer attends over (height/width hold the image size)."""
        if self.level == "model":
            return (self.height // 4) * (self.width // 4)
        return self.height * self.width

    @property
    def model(self) -> str:
        """The model name of a model-level case (its variant without the settings' suffix)."""
        return model_of(self.variant)

    @property
    def options_dict(self) -> dict[str, Any]:
        """The options as given in the suite (values are stored JSON-encoded so a Case stays hashable)."""
        return {k: json.loads(v) for k, v in self.options}

    @property
    def case_id(self) -> str:
        """Short stable hash of the defining fields (not the suite name: the same case in two
        suites is the same measurement)."""
        keys = (
            "mechanism",
            "level",
            "variant",
            "pass_",
            "device",
            "dtype",
            "batch",
            "height",
            "width",
            "heads",
            "head_dim",
            "dim",
        )
        blob = {k: getattr(self, k) for k in keys}
        blob["options"] = list(self.options)
        if self.hardware:  # only then: case_ids of suites without hardware kinds are unchanged
            blob["hardware"] = self.hardware
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def label(self) -> str:
        """'rala_eager op fwd fp32 b1 14x14 h1 d64' (`attnbench.labels.case_label` with detail)."""
        return case_label({**asdict(self), "pass": self.pass_}, detail=True)

    def row_fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        d.pop("options")
        d.pop("skip")
        d.pop("hardware")  # rows of different kinds are told apart by case_id and env_id (hardware_kind)
        d["tokens"] = self.tokens
        d["case_id"] = self.case_id
        return d


def model_settings(suite: Suite) -> dict[str, Any]:
    """The suite's model-level settings (`channels_last`, `compile`, `amp`) that differ from their defaults:
    options of every model-level case, so they reach the workload and the case_id."""
    return {name: getattr(suite, name) for name in MODEL_SETTINGS if getattr(suite, name) != default(name)}


def model_variant(model: str, settings: dict[str, Any]) -> str:
    """The `variant` of a model-level case: the model and its settings, 'ravlt_t+cl+compiled+amp_bf16'."""
    suffix = "+cl" if settings.get("channels_last") else ""
    suffix += "+compiled" if settings.get("compile", "none") != "none" else ""
    suffix += f"+amp_{settings['amp']}" if settings.get("amp", "none") != "none" else ""
    return model + suffix


def model_of(variant: str) -> str:
    """The model name in a model-level variant ('ravlt_t+cl' -> 'ravlt_t')."""
    return variant.split("+", 1)[0]


def _freeze(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Sorted (key, JSON text) pairs: hashable, stable for case_id, decoded by Case.options_dict."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in options.items()))


def skip_reason(
    mech: registry.Mechanism,
    *,
    level: str,
    device: str,
    dtype: str,
    pass_: str,
    heads: int | None,
    dim: int | None,
    grid: tuple[int, int] | None = None,
    options: dict[str, Any] | None = None,
) -> str | None:
    """Why `mech` cannot run this case, or None (`grid` and `options`: the mechanism's own `case_reason`)."""
    ok, reason = mech.available(device)
    if not ok:
        return f"unavailable: {reason}"
    if level in ("op", "mixer") and not mech.supports(level):
        return f"unsupported: {mech.name} has no {level}-level implementation"
    if level == "model" and not mech.supports("mixer"):
        return f"unsupported: {mech.name} has no mixer to put in a model"
    if dtype not in mech.dtypes:
        return f"unsupported dtype {dtype} (supports {', '.join(mech.dtypes)})"
    if pass_ in registry.BACKWARD_PASSES and not mech.has_backward:
        return "unsupported: no backward pass"
    if pass_ == "bwd" and not mech.repeatable_backward:
        return "unsupported: its backward cannot run twice through one retained graph (pass bwd)"
    if level in ("op", "mixer"):
        if dim % heads:
            return f"impossible shape: dim {dim} is not divisible by heads {heads}"
        head_dim = dim // heads
        if mech.head_dims is not None and head_dim not in mech.head_dims:
            return f"unsupported head_dim {head_dim} (supports {', '.join(map(str, mech.head_dims))})"
        if head_dim % 4 and (level == "mixer" or mech.family == "rala"):
            return f"impossible shape: 2D RoPE needs head_dim divisible by 4, got {head_dim}"
        if grid is not None:
            return mech.case_reason(level=level, pass_=pass_, device=device, grid=grid, options=dict(options or {}))
    elif level == "model":  # the stages' grids differ: the mechanism judges the pass and device only
        return mech.case_reason(level=level, pass_=pass_, device=device, grid=None, options=dict(options or {}))
    return None


def _model_skip_reason(
    mech: registry.Mechanism, model_options: dict[str, Any], *, device: str, dtype: str, pass_: str
) -> str | None:
    """Why a model whose stages 1-2 use `mech` and stages 3-4 its `mixer_late` cannot run this case, or None."""
    from attnbench.models.ravlt import DEFAULT_MIXER_LATE

    for used in dict.fromkeys([mech, registry.get(model_options.get("mixer_late", DEFAULT_MIXER_LATE))]):
        reason = skip_reason(used, level="model", device=device, dtype=dtype, pass_=pass_, heads=None, dim=None)
        if reason is not None:
            return reason if used is mech else f"{reason} (mixer_late {used.name})"
    return None


def _variant(mech: registry.Mechanism, level: str, options: dict[str, Any]) -> str:
    """The mechanism's name for what a case runs ("" at model level, where variant is the model)."""
    if level == "model":
        return ""
    try:
        return str(mech.variant(level, dict(options)))
    except Exception as exc:  # a bad option is reported when the case runs, not here
        return f"invalid options ({type(exc).__name__})"


def plan(suite: Suite) -> list[Case]:
    """All cases of the suite, in a stable order (mechanism-major within each level)."""
    cases: list[Case] = []
    mechs = [registry.get(n) for n in expand_mechanisms(suite.mechanisms)]
    settings = model_settings(suite)
    for level in suite.level:
        for mech in mechs:
            opts = _freeze(suite.options.get(mech.name, {}))
            variant = _variant(mech, level, suite.options.get(mech.name, {}))
            for pass_ in suite.pass_:
                for dtype in suite.dtype:
                    if level == "model":
                        for model in suite.models:
                            model_opts = dict(opts)
                            model_opts.update(_freeze(suite.options.get(model, {})))
                            model_opts.update(_freeze(settings))
                            for size in suite.resolution:
                                for batch in suite.batch:
                                    reason = _model_skip_reason(
                                        mech,
                                        suite.options.get(model, {}),
                                        device=suite.device,
                                        dtype=dtype,
                                        pass_=pass_,
                                    )
                                    if reason is None and size % 32:
                                        reason = (
                                            f"impossible shape: RAVLT needs an image size divisible by 32, got {size}"
                                        )
                                    cases.append(
                                        Case(
                                            suite.name,
                                            mech.name,
                                            mech.family,
                                            mech.backend,
                                            level,
                                            model_variant(model, settings),
                                            pass_,
                                            suite.device,
                                            dtype,
                                            batch,
                                            size,
                                            size,
                                            None,
                                            None,
                                            None,
                                            tuple(sorted(model_opts.items())),
                                            reason,
                                        )
                                    )
                        continue
                    for dim in suite.dim:
                        for heads in suite.heads:
                            for height, width in suite.grids:
                                for batch in suite.batch:
                                    reason = skip_reason(
                                        mech,
                                        level=level,
                                        device=suite.device,
                                        dtype=dtype,
                                        pass_=pass_,
                                        heads=heads,
                                        dim=dim,
                                        grid=(height, width),
                                        options=suite.options.get(mech.name, {}),
                                    )
                                    head_dim = dim // heads if dim % heads == 0 else None
                                    cases.append(
                                        Case(
                                            suite.name,
                                            mech.name,
                                            mech.family,
                                            mech.backend,
                                            level,
                                            variant,
                                            pass_,
                                            suite.device,
                                            dtype,
                                            batch,
                                            height,
                                            width,
                                            heads,
                                            head_dim,
                                            dim,
                                            opts,
                                            reason,
                                        )
                                    )
    if suite.hardware:  # every case once per hardware kind, kind-major
        cases = [replace(c, hardware=kind) for kind in suite.hardware for c in cases]
    return cases
