"""Registry behaviour: registration, lookup, availability with reasons, plugins."""

from __future__ import annotations

import pytest

from attnbench import registry
from attnbench.errors import MechanismUnavailable, PluginError, UnknownMechanism
from attnbench.registry import Mechanism, get, names, register_mechanism


@pytest.fixture(autouse=True)
def _builtin():
    registry.load_builtin()


def test_builtin_names_and_fields():
    assert {"softmax_eager", "softmax_sdpa", "softmax_flash", "softmax_xformers", "rala_eager"} <= set(names())
    mech = get("softmax_sdpa")
    assert (mech.name, mech.family, mech.reference) == ("softmax_sdpa", "softmax", "softmax_eager")
    assert set(mech.levels) == {"op", "mixer"}
    assert names(family="softmax") == sorted(n for n in names() if get(n).family == "softmax")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownMechanism) as info:
        get("softmax_sdap")
    assert "softmax_sdpa" in str(info.value)


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):

        @register_mechanism("softmax_eager", family="x")
        class Again(Mechanism):
            pass


def test_unavailable_reason_and_guard():
    flash = get("softmax_flash")
    ok, reason = flash.available("cpu")
    assert not ok and reason  # no flash_attn here, or not on CPU
    import torch

    q = torch.zeros(1, 1, 4, 64, dtype=torch.float16)
    with pytest.raises(MechanismUnavailable, match="softmax_flash is unavailable"):
        flash.op(q, q, q, grid=(2, 2))


def test_requires_missing_package_and_check_hook():
    @register_mechanism("test_needs_pkg", family="test", requires=("definitely_not_a_package_xyz",))
    class NeedsPkg(Mechanism):
        def op(self, q, k, v, *, grid):
            return q

    @register_mechanism("test_checked", family="test")
    class Checked(Mechanism):
        def check(self, device):
            return "broken on purpose" if device == "cpu" else None

        def op(self, q, k, v, *, grid):
            return q

    try:
        ok, reason = get("test_needs_pkg").available("cpu")
        assert not ok and "definitely_not_a_package_xyz" in reason
        ok, reason = get("test_checked").available("cpu")
        assert (ok, reason) == (False, "broken on purpose")
        assert get("test_checked").levels == ("op",)
    finally:
        registry.unregister("test_needs_pkg")
        registry.unregister("test_checked")


def test_plugin_from_file_and_module(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from attnbench.registry import Mechanism, register_mechanism\n"
        "@register_mechanism('test_plugin_identity', family='test')\n"
        "class Identity(Mechanism):\n"
        "    def op(self, q, k, v, *, grid):\n"
        "        return v\n"
    )
    try:
        registry.load_plugins([str(plugin)])
        registry.load_plugins([str(plugin)])  # idempotent
        assert "test_plugin_identity" in names(family="test")
    finally:
        registry.unregister("test_plugin_identity")
    with pytest.raises(PluginError, match="not found"):
        registry.load_plugins([str(tmp_path / "missing.py")])
    with pytest.raises(PluginError, match="cannot be imported"):
        registry.load_plugins(["no_such_module_abc"])
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match="boom"):
        registry.load_plugins([str(broken)])
