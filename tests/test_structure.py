"""The package's structure (shared/design/architecture.md): arrows point down, no cycles.

Imports are read from the source (every `import` / `from ... import` of a jaxdml module, at any
depth of a file, type-checking ones included), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxdml"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from pkg import sub` depends on the submodule; `from pkg import name`, on pkg
        subs = [f"{node.module}.{a.name}" for a in node.names]
        found = [m for m in subs if m in modules]
        if len(found) < len(subs):
          found.append(node.module)
      else:
        continue
      targets |= {f for f in found if f in modules}
    graph[name] = targets - {name}
  return graph


GRAPH = _imports()


def _imports_under(prefix: str) -> set[tuple[str, str]]:
  return {(a, b) for a, deps in GRAPH.items() if a == prefix or a.startswith(prefix + ".")
          for b in deps}


def _layer(module: str) -> int:
  order = [("jaxdml._checks", 0), ("jaxdml._sort", 0), ("jaxdml.similarity", 1),
           ("jaxdml.targets", 1), ("jaxdml.pairs", 1), ("jaxdml.geometry", 1),
           ("jaxdml.losses", 2), ("jaxdml.miners", 2), ("jaxdml.memory", 2),
           ("jaxdml.objectives", 3), ("jaxdml.methods", 3), ("jaxdml.evaluation", 4),
           ("jaxdml.index", 4), ("jaxdml.models", 5), ("jaxdml.data", 5), ("jaxdml.train", 6),
           ("jaxdml.app", 7), ("jaxdml.cli", 7), ("jaxdml", 7)]
  for prefix, layer in order:
    if module == prefix or module.startswith(prefix + "."):
      return layer
  raise AssertionError(f"{module} belongs to no layer")


def test_arrows_point_down():
  up = [(a, b) for a, deps in GRAPH.items() for b in deps
        if b != "jaxdml" and _layer(b) > _layer(a)]
  assert not up, up


def test_the_training_library_imports_no_method_and_no_config():
  bad = {(a, b) for a, b in _imports_under("jaxdml.train")
         if b.startswith(("jaxdml.methods", "jaxdml.app", "jaxdml.cli"))}
  assert not bad, bad


def test_no_loss_or_method_imports_a_model_the_trainer_data_or_the_application():
  for prefix in ("jaxdml.losses", "jaxdml.miners", "jaxdml.objectives", "jaxdml.methods"):
    bad = {(a, b) for a, b in _imports_under(prefix)
           if b.startswith(("jaxdml.models", "jaxdml.train", "jaxdml.data", "jaxdml.app",
                            "jaxdml.cli"))}
    assert not bad, bad


def test_a_miner_imports_no_loss():
  assert not {b for _, b in _imports_under("jaxdml.miners") if b.startswith("jaxdml.losses")}


def _cycles(graph):
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return cycles


def test_the_cycle_check_finds_cycles():
  toy = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.a"}, "q": {"q.x"}, "q.x": {"q"}}
  assert sorted(_cycles(toy)) == [["p.a", "p.b"], ["q", "q.x"]]
  assert _cycles({"p": {"p.a", "p.b"}, "p.a": {"p.b"}, "p.b": set()}) == []


def test_no_import_cycles():
  cycles = _cycles(GRAPH)
  assert not cycles, cycles


def test_the_library_imports_neither_torch_nor_faiss():
  """Not at module level: reading a PyTorch weight file imports torch inside the reader, and
  only then (an optional dependency)."""
  for path in PACKAGE.rglob("*.py"):
    for node in ast.parse(path.read_text()).body:
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.split(".")[0] in ("torch", "faiss") for n in names), path
