"""
The import rules of the house (STYLE.md "Architecture", issue 19), read
from the source with L{ast}: every import counts, including those inside
functions.

  - store/, queue/, access/ and policy/ never import pipeline/;
  - nothing imports listener/ but the listener itself and service.py;
  - relay/ is imported only by the relay itself, the queue side
    (queue/) and the assembly (assembly.py, service.py);
  - no two modules depend on each other, directly or around a cycle;
  - no module is over 600 lines.
"""

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import qutemail

PACKAGE_DIR = os.path.dirname(os.path.abspath(qutemail.__file__))
MAX_MODULE_LINES = 600


def moduleFiles() -> dict[str, str]:
    """
    @return: every module of the package by dotted name, with its path.
    """
    found = {}
    root = os.path.dirname(PACKAGE_DIR)
    for directory, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def importsOf(path: str, modules: dict[str, str]) -> set[str]:
    """
    @return: the package's modules that the file imports, anywhere in it
        (C{from qutemail.x import y} counts as C{qutemail.x.y} when that is
        a module, else as C{qutemail.x}).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "qutemail")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qutemail":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return found


def importGraph() -> dict[str, set[str]]:
    """
    @return: for every module, the package's modules it imports.
    """
    modules = moduleFiles()
    return {name: importsOf(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    @return: the strongly connected components with more than one module
        (Tarjan's algorithm, iteratively).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        onStack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    onStack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in onStack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    onStack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _inPackage(module: str, package: str) -> bool:
    """
    @return: whether C{module} is C{package} or inside it.
    """
    return module == package or module.startswith(package + ".")


class LayerTests(SynchronousTestCase):
    """
    Data flows one way, and the imports say so.
    """

    def setUp(self) -> None:
        """
        Read the import graph once per test.
        """
        self.graph = importGraph()

    def importersOf(self, package: str) -> set[str]:
        """
        @return: the modules outside C{package} that import something in it.
        """
        return {m for m, deps in self.graph.items()
                if not _inPackage(m, package) and any(_inPackage(d, package) for d in deps)}

    def test_graphIsRead(self) -> None:
        """
        The graph has the modules and edges these rules are about (so the
        rules below cannot pass by reading nothing).
        """
        self.assertIn("qutemail.listener.smtp", self.graph)
        self.assertIn("qutemail.pipeline.intake", self.graph["qutemail.listener.smtp"])
        self.assertIn("qutemail.service", self.importersOf("qutemail.listener"))

    def test_lowerLayersDoNotImportPipeline(self) -> None:
        """
        store/, queue/, access/ and policy/ never import pipeline/.
        """
        for package in ("store", "queue", "access", "policy"):
            offenders = {m: sorted(d for d in self.graph[m] if _inPackage(d, "qutemail.pipeline"))
                         for m in self.graph if _inPackage(m, f"qutemail.{package}")}
            self.assertEqual({m: d for m, d in offenders.items() if d}, {})

    def test_listenerImportedOnlyByAssembly(self) -> None:
        """
        Only service.py imports the listener.
        """
        self.assertEqual(self.importersOf("qutemail.listener"), {"qutemail.service"})

    def test_relayImportedOnlyByQueueSide(self) -> None:
        """
        The relay is imported only by the queue side and the assembly
        (the QKD part of which is qkdsetup.py).
        """
        allowed = {"qutemail.service", "qutemail.assembly", "qutemail.qkdsetup"}
        importers = {m for m in self.importersOf("qutemail.relay") if not _inPackage(m, "qutemail.queue")}
        self.assertEqual(importers - allowed, set())

    def test_noCycles(self) -> None:
        """
        No import cycle, lazy imports inside functions included.
        """
        self.assertEqual(cycles(self.graph), [])

    def test_cycleFinderFindsCycles(self) -> None:
        """
        The cycle finder reports a cycle of three and leaves a chain alone.
        """
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
        self.assertEqual(cycles(graph), [["a", "b", "c"]])

    def test_moduleSize(self) -> None:
        """
        No module is over 600 lines.
        """
        sizes = {}
        for name, path in moduleFiles().items():
            with open(path, encoding="utf-8") as f:
                sizes[name] = sum(1 for _ in f)
        self.assertEqual({name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}, {})
