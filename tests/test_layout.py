"""How the house is laid out: no import circles between the packages' modules, tools and tests apart, and
the library imports no reference code."""
import ast
import os

from .conftest import ROOT

PACKAGES = ("config", "data", "engine", "layers", "modeling", "solver", "utils")
SCRIPTS = ("train.py", "test.py")


def _modules(folders):
    """{dotted module name: file} of every .py file under ``folders`` (packages by their own name)."""
    mods = {}
    for top in folders:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    name = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = os.path.join(folder, f)
    return mods


def _imports(name, path, mods):
    """The project modules ``name`` imports anywhere in its file (module level or inside a function)."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own parents are not edges
                out.add(t)
    return out


def import_circles(mods):
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}

    def reach(v):
        seen, todo = set(), [v]
        while todo:
            for w in graph[todo.pop()] - seen:
                seen.add(w)
                todo.append(w)
        return seen

    reachable = {v: reach(v) for v in graph}
    return sorted({tuple(sorted({v} | {w for w in reachable[v] if v in reachable[w]}))
                   for v in graph if v in reachable[v]})


def test_no_import_circles():
    mods = _modules(PACKAGES)
    assert len(mods) > 40 and "data.datasets.registry" in mods
    assert import_circles(mods) == []


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    """The check itself: two modules importing each other (one inside a function) are reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    monkeypatch.setattr("tests.test_layout.ROOT", str(tmp_path))
    assert import_circles(_modules(["pkg"])) == [("pkg.a", "pkg.b")]


def test_tools_import_nothing_from_tests():
    mods = {**_modules(PACKAGES), **_modules(["tests"])}
    for name, path in _modules(["tools"]).items():
        assert not [m for m in _imports(name, path, mods) if m.startswith("tests")], name


def test_the_library_imports_no_reference_code():
    """reference/ (the transcriptions of the authors' code) is for the tests and tools only: no module of the
    packages, nor train.py or test.py, imports it, at module level or inside a function."""
    library = {**_modules(PACKAGES), **{s[:-3]: os.path.join(ROOT, s) for s in SCRIPTS}}
    reference = _modules(["reference"])
    assert "reference.official" in reference
    found = {name: sorted(m for m in _imports(name, path, {**library, **reference}) if m in reference)
             for name, path in library.items()}
    assert {name: refs for name, refs in found.items() if refs} == {}
