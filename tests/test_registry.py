"""Registry behaviour: registration, lookup, availability with reasons, plugins."""

from __future__ import annotations

import pytest

from attnbench import registry
from attnbench.errors import MechanismUnavailable, PluginError, UnknownMechanism
from attnbench.registry import Mechanism, get, names, register_mechanism


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


def test_installed_distributions_register_through_entry_points(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from attnbench import loading

    (tmp_path / "ep_demo_attention.py").write_text(
        "from attnbench.registry import Mechanism, register_mechanism\n"
        "@register_mechanism('test_entry_point_identity', family='test')\n"
        "class Identity(Mechanism):\n"
        "    def op(self, q, k, v, *, grid):\n"
        "        return v\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = EntryPoint(name="demo", value="ep_demo_attention", group=loading.ENTRY_POINT_GROUP)
    bad = EntryPoint(name="broken", value="ep_no_such_module_xyz", group=loading.ENTRY_POINT_GROUP)
    listed = {loading.ENTRY_POINT_GROUP: [good]}
    monkeypatch.setattr(loading.metadata, "entry_points", lambda group: listed.get(group, []))
    try:
        assert "ep_demo_attention" in loading.load_mechanisms()
        assert get("test_entry_point_identity").family == "test"
        assert loading.load_mechanisms(entry_points=False) == list(loading.BUILTIN)
        listed[loading.ENTRY_POINT_GROUP] = [bad]
        with pytest.raises(PluginError, match="entry point 'broken'.*ep_no_such_module_xyz"):
            loading.load_mechanisms()
    finally:
        registry.unregister("test_entry_point_identity")


def test_empty_registry_says_how_to_fill_it(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    with pytest.raises(UnknownMechanism, match="no mechanisms are loaded.*load_mechanisms"):
        get("rala_eager")


def _import_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports: static imports anywhere in the file (function bodies
    too) and importlib.import_module("literal")."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = {}
    for pkg in ("attnbench", "mechanisms"):
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}

    def resolve(target: str) -> str | None:
        while target and target not in files:
            target = target.rpartition(".")[0]
        return target or None

    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                targets = [str(node.args[0].value)]
            for target in targets:
                hit = resolve(target)
                if hit and hit != name:
                    graph[name].add(hit)
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_registry_imports_no_mechanism_and_no_module_sits_on_an_import_cycle():
    graph = _import_graph()
    assert not any(m.split(".")[0] == "mechanisms" for m in graph["attnbench.registry"])
    assert not any(m.split(".")[0] == "mechanisms" for m in graph["attnbench.suite"] | graph["attnbench.plan"])
    on_cycle = sorted(m for m in graph if _reaches(graph, m, m))  # attnbench and mechanisms, every module
    assert not on_cycle, f"import cycles through {on_cycle}"
