"""Mutation testing of the core: ``python -m tests.mutate [--modules=...] [--jobs=N] [--fresh]``.

  make mutate                                   # every target module (cached results reused)
  python -m tests.mutate --modules=pipeline,regulation --jobs=2
  python -m tests.mutate --list [-v]            # count (and show) the mutants, run nothing
  python -m tests.mutate --report-only          # rewrite docs/MUTATION.md from the cache
  (also --operators=cmp,binop, --limit=N, --timeout=S; --help lists them)

For each target module (``TARGETS``) it makes plausible single-point bugs ("mutants") with the
``ast`` module, applies each alone to a temporary copy of the repository (one copy per job, made
once per run: the working tree itself is never written, so killing the run leaves nothing
behind), runs the fast tests mapped to that module (``TESTS``) with
``pytest -x -q -p no:cacheprovider`` under a per-mutant timeout, and records whether the tests
fail (killed), pass (survived) or hang (timeout).

Mutation operators (``OPERATORS``; deterministic, in source order):
  cmp     a comparison operator: > <-> >=, < <-> <=, == <-> !=, is <-> is not, in <-> not in
  binop   an arithmetic or bitwise operator (also in ``x op= y``): + <-> -, * <-> /, // -> *,
          % -> //, ** -> *, & <-> | (jnp's logical and/or of boolean arrays)
  const   a number: 0 <-> 1, other ints n -> n + 1, floats x -> 1.1 x (0.0 -> 1.0)
  index   a negative index or slice bound: [-1] -> [-2]
  bool    True <-> False
  boolop  and <-> or
  unary   ``not x``, ``-x``, ``~x`` -> ``x``
  swap    the two positional arguments of a call with exactly two
  where   ``where(c, a, b)`` -> ``where(c, b, a)``
  minmax  min <-> max, minimum <-> maximum (builtins, np, jnp)
  return  ``return <expr>`` -> ``return None``
Not mutated: docstrings and strings, type annotations, ``raise`` statements (error messages),
``assert`` messages, f-strings, print/logging/warnings calls, lines marked
``# pragma: no mutate`` (on a ``def`` or ``class`` line: the whole body).

Results are cached in ``runs/mutation/<module>.json`` keyed by the module's source hash and the
mutant id (``<module>:<function>:<operator>:<hash of the change>``: stable when other code
moves). A rerun skips finished mutants: killed ones while the module's source is unchanged,
survived and timed-out ones while the mapped test files are unchanged too. ``--fresh`` discards
the selected modules' results. Tests that fail on the unmutated copy are deselected (and
reported) so that a module under edit can still be measured.

At the end it writes docs/MUTATION.md from the cache: per module the score
(killed + timeout) / mutants, and every survivor with its reason from the optional
tests/mutation_equivalent.json (``{"<mutant id>": "why it is equivalent or out of reach"}``).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import copy
import datetime
import fnmatch
import glob
import hashlib
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Modules to mutate, in report order (globs; files that do not exist are skipped).
TARGETS = [
    "inforeg_jax/regulation.py",
    "inforeg_jax/window.py",
    "inforeg_jax/methods/*.py",
    "inforeg_jax/train.py",
    "inforeg_jax/trainer.py",
    "inforeg_jax/checkpoint.py",
    "inforeg_jax/data/pipeline.py",
    "experiments/claims.py",
]

# Module (glob, first match wins) -> the fast test files that guard it (globs, ``{name}``: the
# module's file name without .py; missing files are left out), run in this order with -x, so
# the quickest and most direct tests come first. Only unit tests that take seconds: every
# mutant runs them. Never the end-to-end or subprocess files (test_run, test_methods_e2e,
# test_failure_modes, test_distributed, test_analyses, test_config's CLI runs, ...).
TESTS = {
    "inforeg_jax/regulation.py": ["tests/test_regulation.py", "tests/test_properties.py"],
    "inforeg_jax/window.py": ["tests/test_window.py", "tests/test_regulation.py",
                              "tests/test_properties.py"],
    "inforeg_jax/methods/__init__.py": ["tests/test_methods.py"],
    "inforeg_jax/methods/base.py": ["tests/test_methods.py", "tests/test_train_step.py"],
    "inforeg_jax/methods/options.py": ["tests/test_methods.py"],
    "inforeg_jax/methods/joint.py": ["tests/test_methods.py"],
    "inforeg_jax/methods/inforeg.py": ["tests/test_methods.py"],
    "inforeg_jax/methods/*.py": ["tests/test_{name}.py", "tests/test_golden_{name}.py",
                                 "tests/test_methods.py"],
    "inforeg_jax/train.py": ["tests/test_train_step.py"],
    "inforeg_jax/trainer.py": ["tests/test_trainer.py", "tests/test_checkpoint.py"],
    "inforeg_jax/checkpoint.py": ["tests/test_checkpoint.py"],
    "inforeg_jax/data/pipeline.py": ["tests/test_pipeline.py"],
    "experiments/claims.py": ["tests/test_claims.py"],
}

CACHE_DIR = "runs/mutation"
REPORT = "docs/MUTATION.md"
EQUIVALENT = "tests/mutation_equivalent.json"
PRAGMA = "pragma: no mutate"
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "_mutate_plugin"]
# Copied into each workspace: records the failing tests (for the baseline and "killed by").
PLUGIN = '''import os
def pytest_runtest_logreport(report):
  path = os.environ.get("MUTATE_FAILED")
  if path and report.failed:
    with open(path, "a") as f:
      f.write(report.nodeid + "\\n")
def pytest_collectreport(report):
  pytest_runtest_logreport(report)
'''
# Libraries the fork server imports once (never the package under test); each test run is a
# child forked from it, so a mutant costs its tests, not an interpreter start and ~3 s of imports.
PRELOAD = ("numpy", "jax", "jax.numpy", "jax.experimental.multihost_utils", "flax",
           "flax.linen", "flax.struct", "optax", "chex", "pytest", "hypothesis",
           "hypothesis.strategies", "hypothesis.extra.numpy", "orbax.checkpoint", "grain",
           "tqdm.auto", "sklearn.metrics")
# Copied into each workspace and started there (``--no-fork``: a fresh ``python -m pytest`` per
# run instead). Protocol: one JSON request a line on stdin ({"args": [...], "env": {...}}),
# answered by {"pid": child} when the child starts and {"rc": exit status} when it ends.
SERVER = '''import json, os, runpy, sys
out = os.fdopen(os.dup(1), "w")  # the answers; whatever else writes to stdout goes nowhere
os.dup2(os.open(os.devnull, os.O_RDWR), 1)
if os.path.exists(os.path.join("tests", "conftest.py")):  # its environment, read at jax import
  runpy.run_path(os.path.join("tests", "conftest.py"))
for name in %r:
  try:
    __import__(name)
  except Exception:
    pass
from jax._src import xla_bridge
if xla_bridge.backends_are_initialized() or any(
    m.split(".")[0] == "inforeg_jax" for m in sys.modules):
  sys.exit(3)  # forking would share a started backend or the unmutated package
out.write("ready\\n")
out.flush()
for line in sys.stdin:
  request = json.loads(line)
  pid = os.fork()
  if pid == 0:
    rc = 4
    try:
      os.setsid()
      null = os.open(os.devnull, os.O_RDWR)
      for fd in (0, 1, 2):
        os.dup2(null, fd)
      os.environ.update(request["env"])
      import pytest
      rc = int(pytest.main(request["args"]))
    finally:
      os._exit(rc)
  out.write(json.dumps({"pid": pid}) + "\\n")
  out.flush()
  _, status = os.waitpid(pid, 0)
  out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\\n")
  out.flush()
''' % (PRELOAD,)

OPERATORS = ("cmp", "binop", "const", "index", "bool", "boolop", "unary", "swap", "where",
             "minmax", "return")

JAX_CACHE = ""  # the run's JAX compilation cache (a temporary directory, set by main)
STOPPING = threading.Event()  # set on interrupt: results of killed test runs are not recorded
WORKSPACES: list = []

CMP_SWAP = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
            ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
            ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
            ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
MINMAX = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum"}
# Calls whose two arguments are not swapped: nonsense or commutative (always equivalent).
NO_SWAP = {"isinstance", "issubclass", "getattr", "setattr", "hasattr", "super", "zip", "print",
           "min", "max", "minimum", "maximum", "add", "multiply", "logical_and", "logical_or",
           "logical_xor", "hypot"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


# ---------------------------------------------------------------------------------------------
# Mutants

@dataclass
class Mutant:
  id: str
  line: int
  kind: str
  before: str
  after: str
  source: str = field(repr=False)  # the whole mutated module


def dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{dotted(node.value)}.{node.attr}"
  if isinstance(node, ast.Call):
    return dotted(node.func) + "()"
  return "?"


def is_log_call(node) -> bool:
  if not isinstance(node, ast.Call):
    return False
  name = dotted(node.func)
  last = name.rsplit(".", 1)[-1]
  return (last == "print" or name.startswith("warnings.") or name in ("tqdm.write",)
          or (last in LOG_METHODS and "log" in name.rsplit(".", 1)[0].lower())
          or name.endswith("stderr.write") or name.endswith("stdout.write"))


def number(node):
  """The value of a numeric literal (``3``, ``-0.5``), else None."""
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return node.value
  if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
      and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
    return -node.operand.value
  return None


def literal(value) -> ast.expr:
  if isinstance(value, float):
    value = float(f"{value:.12g}")
  if value < 0:
    return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-value))
  return ast.Constant(value)


def nodes(tree: ast.Module, pragma_lines: set[int]):
  """(node, qualname, skipped, in_index) for every node, in a fixed order."""
  out = []

  def visit(node, qual, skip, in_index):
    line = getattr(node, "lineno", None)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      qual = f"{qual}.{node.name}" if qual else node.name
      heads = {node.lineno} | {d.lineno for d in node.decorator_list}
      skip = skip or bool(heads & pragma_lines)
    body_skip = skip  # a pragma on an if/for/with line covers its header, not its body
    if isinstance(node, (ast.Raise, ast.JoinedStr)) or is_log_call(node):
      skip = body_skip = True
    if line is not None and line in pragma_lines:
      skip = True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      body_skip = skip
    out.append((node, qual, skip, in_index))
    for name, value in ast.iter_fields(node):
      if name in ("annotation", "returns", "type_comment"):
        continue  # not executed (from __future__ import annotations)
      child_skip = body_skip if name in ("body", "orelse", "finalbody", "handlers") else skip
      if isinstance(node, ast.Assert) and name == "msg":
        continue
      sub_index = in_index
      if isinstance(node, ast.Subscript):
        sub_index = name == "slice"
      elif not isinstance(node, (ast.Tuple, ast.Slice, ast.UnaryOp)):
        sub_index = False
      children = value if isinstance(value, list) else [value]
      for child in children:
        if isinstance(child, ast.AST):
          visit(child, qual, child_skip, sub_index)

  visit(tree, "", False, False)
  return out


def candidates(node, in_index, parent_is_usub_literal):
  """(operator, new node) for each mutation of this node."""
  if parent_is_usub_literal:
    return
  value = number(node)
  if value is not None:
    if in_index and isinstance(value, int) and value < 0:
      yield "index", literal(value - 1)
    elif isinstance(value, int):
      yield "const", literal({0: 1, 1: 0}.get(value, value + 1))
    else:
      yield "const", literal(1.0 if value == 0 else value * 1.1)
    return
  if isinstance(node, ast.Constant) and isinstance(node.value, bool):
    yield "bool", ast.Constant(not node.value)
  elif isinstance(node, ast.Compare):
    for i, op in enumerate(node.ops):
      if type(op) in CMP_SWAP:
        new = copy.deepcopy(node)
        new.ops[i] = CMP_SWAP[type(op)]()
        yield "cmp", new
  elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BIN_SWAP:
    operands = [node.left, node.right] if isinstance(node, ast.BinOp) else [node.value]
    if not any(isinstance(o, ast.JoinedStr) or (isinstance(o, ast.Constant)
                                                and isinstance(o.value, (str, bytes)))
               for o in operands):
      new = copy.deepcopy(node)
      new.op = BIN_SWAP[type(node.op)]()
      yield "binop", new
  elif isinstance(node, ast.BoolOp):
    new = copy.deepcopy(node)
    new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    yield "boolop", new
  elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
    yield "unary", copy.deepcopy(node.operand)
  elif isinstance(node, ast.Call):
    name = dotted(node.func)
    last = name.rsplit(".", 1)[-1]
    positional = [a for a in node.args if not isinstance(a, ast.Starred)]
    if (len(node.args) == 2 and len(positional) == 2 and last not in NO_SWAP
        and ast.dump(node.args[0]) != ast.dump(node.args[1])):
      new = copy.deepcopy(node)
      new.args = new.args[::-1]
      yield "swap", new
    if last == "where" and len(node.args) == 3 and len(positional) == 3:
      new = copy.deepcopy(node)
      new.args = [new.args[0], new.args[2], new.args[1]]
      yield "where", new
    if last in MINMAX and (name == last or name.split(".")[0] in ("np", "jnp", "numpy", "jax")):
      new = copy.deepcopy(node)
      if isinstance(new.func, ast.Name):
        new.func.id = MINMAX[last]
      else:
        new.func.attr = MINMAX[last]
      yield "minmax", new
  elif isinstance(node, ast.Return) and node.value is not None:
    if not (isinstance(node.value, ast.Constant) and node.value.value is None):
      yield "return", ast.Return(value=ast.Constant(None))


def short(text: str, width: int = 90) -> str:
  text = " ".join(text.split())
  return text if len(text) <= width else text[:width // 2 - 2] + " ... " + text[-width // 2 + 3:]


def splice(source: str, node, new) -> str:
  """The source with ``node``'s text replaced by ``new`` (columns are UTF-8 byte offsets)."""
  lines = source.encode().splitlines(keepends=True)
  start = sum(len(l) for l in lines[:node.lineno - 1]) + node.col_offset
  end = sum(len(l) for l in lines[:node.end_lineno - 1]) + node.end_col_offset
  text = ast.unparse(new)
  if isinstance(node, ast.expr):
    text = f"({text})"
  data = source.encode()
  return (data[:start] + text.encode() + data[end:]).decode()


@contextlib.contextmanager
def swapped(parents, node, new):
  """``node`` replaced by ``new`` in its parent for the duration of the block."""
  parent, name, i = parents[id(node)]
  value = getattr(parent, name)
  if isinstance(value, list):
    value[i] = new
  else:
    setattr(parent, name, new)
  try:
    yield parent
  finally:
    if isinstance(value, list):
      value[i] = node
    else:
      setattr(parent, name, node)


def describe(kind, node, new, parents) -> tuple[str, str]:
  """The change as text: the node itself, or for a bare literal the code around it."""
  if kind not in ("const", "index", "bool"):
    return short(ast.unparse(node)), short(ast.unparse(new))
  parent, name, i = parents[id(node)]
  if isinstance(parent, (ast.keyword, ast.arguments)):
    if isinstance(parent, ast.keyword):
      label = parent.arg
    elif name == "defaults":
      label = (parent.posonlyargs + parent.args)[-len(parent.defaults):][i].arg
    else:
      label = parent.kwonlyargs[i].arg
    return f"{label}={ast.unparse(node)}", f"{label}={ast.unparse(new)}"
  before = ast.unparse(parent)
  with swapped(parents, node, new):
    after = ast.unparse(parent)
  if len(before) > 90:  # a long statement: the literal's own line
    return short(ast.unparse(node)), short(ast.unparse(new))
  return short(before), short(after)


def module_name(path: str) -> str:
  name = path[:-3].replace("/", ".").replace(os.sep, ".")
  return name.removeprefix("inforeg_jax.")


def make_mutants(path: str, source: str) -> list[Mutant]:
  tree = ast.parse(source)
  pragma_lines = {i + 1 for i, l in enumerate(source.splitlines()) if PRAGMA in l}
  listed = nodes(tree, pragma_lines)
  usub_literals = {id(n.operand) for n, *_ in listed if number(n) is not None
                   and isinstance(n, ast.UnaryOp)}
  parents = {id(child): (parent, name, i) for parent in ast.walk(tree)
             for name, value in ast.iter_fields(parent)
             for i, child in enumerate(value if isinstance(value, list) else [value])
             if isinstance(child, ast.AST)}
  mutants, seen_sources, occurrences, ids = [], {source}, {}, set()
  prefix = module_name(path)
  for node, qual, skip, in_index in listed:
    if skip:
      continue
    for kind, new in candidates(node, in_index, id(node) in usub_literals):
      mutated = splice(source, node, new)
      # Check that the text says what the tree says (parentheses, precedence, offsets).
      try:
        with swapped(parents, node, new):
          expected = ast.dump(tree)
        if ast.dump(ast.parse(mutated)) != expected:
          continue
      except SyntaxError:
        continue
      if mutated in seen_sources:
        continue
      seen_sources.add(mutated)
      before, after = describe(kind, node, new, parents)
      key = (qual, kind, before, after, ast.unparse(node), ast.unparse(new))
      occurrences[key] = occurrences.get(key, 0) + 1
      digest = hashlib.sha1("|".join(map(str, key + (occurrences[key],))).encode()).hexdigest()
      mutant_id = f"{prefix}:{qual or '<module>'}:{kind}:{digest[:6]}"
      assert mutant_id not in ids, mutant_id
      ids.add(mutant_id)
      mutants.append(Mutant(id=mutant_id,
                            line=node.lineno, kind=kind, before=before, after=after,
                            source=mutated))
  return mutants


# ---------------------------------------------------------------------------------------------
# Targets, tests, cache

def expand_targets(selection: str | None) -> list[str]:
  found = []
  for pattern in TARGETS:
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
      rel = os.path.relpath(path, ROOT)
      if rel not in found:
        found.append(rel)
  if not selection:
    return found
  chosen = []
  for item in (s.strip() for s in selection.split(",") if s.strip()):
    matches = [t for t in found if fnmatch.fnmatch(t, item) or t == item
               or item in (t, module_name(t), os.path.basename(t)[:-3])]
    if not matches and os.path.isfile(os.path.join(ROOT, item)):
      matches = [item]
    if not matches:
      raise SystemExit(f"--modules: {item!r} matches no target module (have: {', '.join(found)})")
    chosen += [m for m in matches if m not in chosen]
  return chosen


def tests_for(path: str, root: str = ROOT) -> list[str]:
  for pattern, files in TESTS.items():
    if fnmatch.fnmatch(path, pattern):
      out = []
      name = os.path.basename(path)[:-3]
      for f in files:
        f = f.replace("{name}", name)
        out += [os.path.relpath(p, root) for p in sorted(glob.glob(os.path.join(root, f)))]
      return list(dict.fromkeys(out))
  return []


def digest_files(paths, root: str = ROOT) -> str:
  h = hashlib.sha256()
  for p in paths:
    h.update(p.encode())
    with open(os.path.join(root, p), "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def cache_path(path: str) -> str:
  return os.path.join(ROOT, CACHE_DIR, module_name(path) + ".json")


def load_cache(path: str) -> dict:
  try:
    with open(cache_path(path)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {"module": path, "sources": {}}


def save_cache(path: str, cache: dict) -> None:
  target = cache_path(path)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  tmp = f"{target}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(cache, f, indent=1, sort_keys=True)
  os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------
# Workspaces: temporary copies of the repository

def repo_files() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
  except (OSError, subprocess.CalledProcessError):
    files = []
    for d, dirs, names in os.walk(ROOT):
      dirs[:] = [x for x in dirs if x not in (".git", ".venv", "runs", "data", "__pycache__")]
      files += [os.path.relpath(os.path.join(d, n), ROOT) for n in names]
  return [f for f in files if os.path.isfile(os.path.join(ROOT, f))]


class Workspace:
  """A temporary copy of the repository's files (of ``files`` under ``source``)."""

  def __init__(self, files, source=ROOT, fork=True):
    self.dir = tempfile.mkdtemp(prefix="mutate-")
    for f in files:
      dst = os.path.join(self.dir, f)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.copy2(os.path.join(source, f), dst)
    with open(os.path.join(self.dir, "_mutate_plugin.py"), "w") as f:
      f.write(PLUGIN)
    with open(os.path.join(self.dir, "_mutate_server.py"), "w") as f:
      f.write(SERVER)
    self.proc = None  # the pytest subprocess (no fork server)
    self.fork = fork
    self.server = None  # the fork server and the queue of its answer lines
    self.answers = None
    self.child = None  # the forked pytest's pid while it runs
    # The tests must import the copy, not the working tree (the package is installed editable).
    spec = subprocess.run(
        [sys.executable, "-c",
         "import importlib.util as u; print(u.find_spec('inforeg_jax').origin)"],
        cwd=self.dir, env=self.env(), capture_output=True, text=True).stdout.strip()
    if not spec.startswith(self.dir):
      self.remove()
      raise SystemExit(f"the workspace copy imports inforeg_jax from {spec!r}, not {self.dir}")

  def env(self, **extra):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **extra,
               PYTHONPATH=os.pathsep.join([self.dir] + [p for p in [os.environ.get(
                   "PYTHONPATH")] if p]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    if JAX_CACHE:  # every compilation cached, however quick: most recur from mutant to mutant
      env.update(JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env

  def write(self, rel: str, text: str) -> None:
    dst = os.path.join(self.dir, rel)
    tmp = dst + ".mutate-tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, dst)

  def start_server(self) -> bool:
    """Starts the fork server if it is not running; False if it cannot (then plain runs)."""
    if self.server is not None and self.server.poll() is None:
      return True
    self.server = subprocess.Popen([sys.executable, "_mutate_server.py"], cwd=self.dir,
                                   env=self.env(), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True, start_new_session=True)
    answers = self.answers = queue.Queue()

    def read(stream):
      for line in stream:
        answers.put(line)
      answers.put(None)

    threading.Thread(target=read, args=(self.server.stdout,), daemon=True).start()
    try:
      ready = answers.get(timeout=300)
    except queue.Empty:
      ready = None
    if ready is None or ready.strip() != "ready":
      self.stop_server()
      self.fork = False
      print("  the fork server did not start; running a fresh pytest per mutant", flush=True)
      return False
    return True

  def stop_server(self):
    server, self.server = self.server, None
    if server is not None and server.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
      server.wait()

  def pytest(self, tests, deselect, timeout, stop_first=True):
    """(returncode or None on timeout, seconds, failing node ids)."""
    failed = os.path.join(self.dir, "_failed.txt")
    if os.path.exists(failed):
      os.remove(failed)
    args = PYTEST[2:] + ([] if stop_first else ["--maxfail=1000"])
    if not stop_first:
      args.remove("-x")
    for d in deselect:
      args += ["--deselect", d]
    args += list(tests)
    start = time.monotonic()
    if self.fork and self.start_server():
      rc = self.forked(args, {"MUTATE_FAILED": failed}, timeout)
    else:
      self.proc = subprocess.Popen([sys.executable, "-m", "pytest"] + args, cwd=self.dir,
                                   env=self.env(MUTATE_FAILED=failed),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
      try:
        rc = self.proc.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        self.kill()
        rc = None
      finally:
        self.proc = None
    seconds = time.monotonic() - start
    ids = []
    if os.path.exists(failed):
      with open(failed) as f:
        ids = list(dict.fromkeys(l.strip() for l in f if l.strip()))
    return rc, seconds, ids

  def forked(self, args, env, timeout):
    """One pytest run in a child of the fork server: its exit status, None on timeout."""
    self.server.stdin.write(json.dumps({"args": args, "env": env}) + "\n")
    self.server.stdin.flush()
    answer = self.answers.get(timeout=120)
    if answer is None:
      raise RuntimeError("the fork server stopped")
    self.child = json.loads(answer)["pid"]
    try:
      answer = self.answers.get(timeout=timeout)
      timed_out = False
    except queue.Empty:
      timed_out = True
      self.kill()
      answer = self.answers.get(timeout=120)
    finally:
      self.child = None
    if answer is None:
      raise RuntimeError("the fork server stopped")
    return None if timed_out else json.loads(answer)["rc"]

  def kill(self):
    """Kills the running test process (and its children); the fork server stays."""
    child = self.child
    if child is not None:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(child, signal.SIGKILL)  # the forked pytest made itself a process group
    proc = self.proc
    if proc is not None and proc.poll() is None:
      try:
        os.killpg(proc.pid, signal.SIGKILL)  # the pytest we started and its children
      except ProcessLookupError:
        pass
      proc.wait()

  def remove(self):
    self.kill()
    self.stop_server()
    shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Running

def machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs"


def run_module(path, workspaces, snapshot, args, bar_cls):
  """Mutants of one module; ``snapshot``: the copy of the repository every workspace holds."""
  if not os.path.isfile(os.path.join(snapshot, path)):
    print(f"{path}: not in the snapshot; skipped")
    return
  with open(os.path.join(snapshot, path)) as f:
    source = f.read()
  tests = tests_for(path, snapshot)
  if not tests:
    print(f"{path}: no test files mapped or present; skipped")
    return
  src_hash = hashlib.sha256(source.encode()).hexdigest()[:16]
  tests_hash = digest_files(tests + ["tests/conftest.py"], snapshot)
  cache = load_cache(path)
  if args.fresh:
    cache["sources"].pop(src_hash, None)
  entry = cache["sources"].setdefault(src_hash, {"mutants": {}})
  mutants = make_mutants(path, source)
  done = entry["mutants"]
  for stale in set(done) - {m.id for m in mutants}:
    del done[stale]

  def finished(m):
    r = done.get(m.id)
    if r is None or r["status"] == "error":
      return False
    return r["status"] == "killed" or r.get("tests_hash") == tests_hash

  todo = [m for m in mutants if not finished(m) and m.kind in args.operators.split(",")]
  if args.limit:
    todo = todo[:args.limit]
  print(f"{path}: {len(mutants)} mutants, {len(mutants) - len(todo)} cached, "
        f"{len(todo)} to run; tests: {' '.join(tests)}", flush=True)
  if not todo:
    return

  # Baseline on the unmutated copy: which tests fail already, and how long the tests take.
  ws = workspaces.get()
  try:
    rc, base_s, failing = ws.pytest(tests, [], timeout=args.baseline_timeout, stop_first=False)
    if rc not in (0, None) and failing:
      print(f"  {len(failing)} test(s) fail without any mutation; deselected: "
            + ", ".join(failing), flush=True)
      rc, base_s, _ = ws.pytest(tests, failing, timeout=args.baseline_timeout, stop_first=False)
  finally:
    workspaces.put(ws)
  if rc != 0:
    print(f"  the tests do not pass on the unmutated module (exit {rc}); skipped", flush=True)
    entry["baseline"] = {"status": f"exit {rc}", "seconds": round(base_s, 2)}
    save_cache(path, cache)
    return
  timeout = args.timeout or (args.timeout_factor * base_s + 15)
  entry.update(path=path, total=len(mutants), tests=tests, tests_hash=tests_hash,
               deselected=failing,
               baseline={"status": "pass", "seconds": round(base_s, 2)},
               timeout=round(timeout, 1),
               date=datetime.datetime.now().isoformat(timespec="seconds"),
               command=args.command, machine=machine(), jobs=args.jobs)
  save_cache(path, cache)
  print(f"  baseline {base_s:.1f} s, timeout per mutant {timeout:.0f} s", flush=True)

  lock = threading.Lock()

  def one(m: Mutant):
    ws = workspaces.get()
    try:
      ws.write(path, m.source)
      rc, seconds, failed = ws.pytest(tests, failing, timeout)
    finally:
      ws.write(path, source)
      workspaces.put(ws)
    if STOPPING.is_set():
      return "interrupted"
    status = ("timeout" if rc is None else "survived" if rc == 0
              else "killed" if rc in (1, 2) else "error")
    result = {"status": status, "line": m.line, "kind": m.kind, "before": m.before,
              "after": m.after, "seconds": round(seconds, 2), "tests_hash": tests_hash}
    if status == "killed" and failed:
      result["killed_by"] = failed[0]
    if status == "error":
      result["exit"] = rc
    with lock:
      done[m.id] = result
      save_cache(path, cache)
    return status

  counts = {}
  bar = bar_cls(total=len(todo), desc=module_name(path), unit="mutant", dynamic_ncols=True)
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    futures = [pool.submit(one, m) for m in todo]
    try:
      for fut in concurrent.futures.as_completed(futures):
        status = fut.result()
        counts[status] = counts.get(status, 0) + 1
        bar.set_postfix(counts, refresh=False)
        bar.update()
    except BaseException:
      STOPPING.set()
      for fut in futures:
        fut.cancel()
      for ws in WORKSPACES:
        ws.kill()
      raise
    finally:
      bar.close()


# ---------------------------------------------------------------------------------------------
# Report

def write_report(args) -> str:
  try:
    with open(os.path.join(ROOT, EQUIVALENT)) as f:
      reasons = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
  except (OSError, ValueError):
    reasons = {}
  rows, survivors, notes = [], [], []
  for path in expand_targets(None):
    with open(os.path.join(ROOT, path)) as f:
      source = f.read()
    src_hash = hashlib.sha256(source.encode()).hexdigest()[:16]
    cache = load_cache(path)
    entry = cache["sources"].get(src_hash)
    ids = {m.id: m for m in make_mutants(path, source)}
    results = {k: v for k, v in (entry or {}).get("mutants", {}).items() if k in ids}
    total = len(ids)
    stale = ""
    if not results:  # the latest results for an earlier version of the file, marked so
      older = sorted((e for h, e in cache["sources"].items() if e.get("mutants") and "total" in e),
                     key=lambda e: e.get("date", ""))
      if older:
        entry, results, total = older[-1], older[-1]["mutants"], older[-1]["total"]
        stale = " (earlier source)"
        notes.append(f"- `{path}`: the file has changed since it was measured "
                     f"({entry.get('date', '?')[:16].replace('T', ' ')}); rerun to update.")
    if not results:
      if not tests_for(path):
        why = "no fast test file mapped in `TESTS` exists yet"
      else:
        why = "not measured for the current source"
        if cache["sources"]:
          why += " (results exist for an earlier version of the file)"
        if (entry or {}).get("baseline", {}).get("status", "pass") != "pass":
          why = f"its tests fail without any mutation ({entry['baseline']['status']})"
      notes.append(f"- `{path}`: {total} mutants, {why}.")
      continue
    by = {}
    for r in results.values():
      by[r["status"]] = by.get(r["status"], 0) + 1
    caught = by.get("killed", 0) + by.get("timeout", 0)
    surv = {k: r for k, r in results.items() if r["status"] == "survived"}
    equivalent = sum(1 for k in surv if k in reasons)
    per = [r["seconds"] for r in results.values()]
    missing = total - len(results)
    score = f"{caught}/{total} ({100 * caught / total:.0f}%)"
    adj_total = total - equivalent
    adjusted = f"{100 * caught / adj_total:.0f}%" if adj_total else "-"
    rows.append(f"| `{path}`{stale} | {total} | {by.get('killed', 0)} | {by.get('timeout', 0)} | "
                f"{len(surv)} | {by.get('error', 0) + missing} | **{score}** | {adjusted} | "
                f"{sum(per) / len(per):.1f} | {entry.get('baseline', {}).get('seconds', '-')} | "
                f"{' '.join(f'`{t}`' for t in entry.get('tests', []))} | "
                f"{entry.get('date', '-')[:16].replace('T', ' ')} |")
    if entry.get("deselected"):
      notes.append(f"- `{path}`: tests failing on the unmutated source were deselected: "
                   + ", ".join(f"`{d}`" for d in entry["deselected"]))
    for k, r in sorted(surv.items(), key=lambda kv: kv[1]["line"]):
      change = f"`{r['before']}` -> `{r['after']}`".replace("|", "\\|")
      survivors.append((path, f"| `{k}` | `{path}:{r['line']}` | {r['kind']} | {change} | "
                              f"{reasons.get(k, '').replace('|', chr(92) + '|')} |"))
  now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  out = [
      "# Mutation testing",
      "",
      "Written by `python -m tests.mutate` (`make mutate`); see the docstring of "
      "`tests/mutate.py` for the operators and what is not mutated.",
      "",
      "- command: `make mutate` (all modules) or `python -m tests.mutate --modules=NAME,...`; "
      "results are cached in `runs/mutation/`, so a rerun only runs what changed",
      f"- this file written: {now}, by `{args.command}`",
      f"- machine: {machine()}, Python {platform.python_version()}, {args.jobs} jobs "
      "(shared: timings vary with the load)",
      "",
      "Score: (killed + timeout) / mutants. *Adjusted* leaves out the survivors that "
      f"`{EQUIVALENT}` documents as equivalent or out of reach. *s/mutant*: mean wall time "
      "of one mutant's test run (one job); the run takes about mutants x s/mutant / jobs.",
      "",
      "| module | mutants | killed | timeout | survived | not run | score | adjusted | "
      "s/mutant | baseline s | tests | measured |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
      *rows,
      "",
  ]
  if notes:
    out += ["Not measured or with caveats:", "", *notes, ""]
  out += ["## Surviving mutants", ""]
  if not survivors:
    out += ["None.", ""]
  for path in dict.fromkeys(p for p, _ in survivors):
    out += [f"### `{path}`", "", "| id | place | operator | change | reason |",
            "| --- | --- | --- | --- | --- |", *[s for p, s in survivors if p == path], ""]
  text = "\n".join(out)
  dst = os.path.join(ROOT, REPORT)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with open(dst + ".tmp", "w") as f:
    f.write(text)
  os.replace(dst + ".tmp", dst)
  return dst


# ---------------------------------------------------------------------------------------------

def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m tests.mutate",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--modules", help="comma-separated paths, globs or names (pipeline, "
                      "regulation, methods.ogm_ge); default: every target")
  parser.add_argument("--jobs", type=int, default=2, help="parallel test runs (default 2)")
  parser.add_argument("--fresh", action="store_true", help="discard cached results")
  parser.add_argument("--timeout", type=float, default=0,
                      help="seconds per mutant (default: timeout_factor x baseline + 15)")
  parser.add_argument("--timeout-factor", type=float, default=4.0)
  parser.add_argument("--baseline-timeout", type=float, default=900)
  parser.add_argument("--operators", default=",".join(OPERATORS),
                      help="comma-separated operators to run (default: all)")
  parser.add_argument("--no-fork", action="store_true",
                      help="a fresh `python -m pytest` per mutant instead of a child of the fork "
                      "server (slower; for debugging)")
  parser.add_argument("--limit", type=int, default=0, help="run at most N mutants per module")
  parser.add_argument("--list", action="store_true",
                      help="print the mutants (count per module; with -v each) and exit")
  parser.add_argument("-v", "--verbose", action="store_true")
  parser.add_argument("--report-only", action="store_true",
                      help=f"only rewrite {REPORT} from the cache")
  args = parser.parse_args(argv)
  unknown = set(args.operators.split(",")) - set(OPERATORS)
  if unknown:
    parser.error(f"--operators: unknown {sorted(unknown)}; have {', '.join(OPERATORS)}")
  args.command = "python -m tests.mutate" + "".join(
      f" {a}" for a in (sys.argv[1:] if argv is None else argv))
  targets = expand_targets(args.modules)

  if args.list:
    total = 0
    for path in targets:
      with open(os.path.join(ROOT, path)) as f:
        mutants = make_mutants(path, f.read())
      total += len(mutants)
      kinds = {}
      for m in mutants:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
      print(f"{path}: {len(mutants)} mutants "
            f"({', '.join(f'{k} {v}' for k, v in kinds.items())}); tests: "
            f"{' '.join(tests_for(path)) or '(none)'}")
      if args.verbose:
        for m in mutants:
          print(f"  {m.id}  {path}:{m.line}  {m.before}  ->  {m.after}")
    print(f"total: {total}")
    return 0
  if args.report_only:
    print(f"wrote {write_report(args)}")
    return 0

  try:
    from tqdm import tqdm as bar_cls
  except ImportError:  # pragma: no cover
    bar_cls = None

  def on_term(signum, frame):
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, on_term)
  files = repo_files()
  global JAX_CACHE
  JAX_CACHE = tempfile.mkdtemp(prefix="mutate-jax-cache-")
  workspaces, made = queue.Queue(), []
  try:
    for _ in range(max(1, args.jobs)):  # one snapshot of the tree, copied for each job
      ws = Workspace(files, made[0].dir if made else ROOT, fork=not args.no_fork)
      made.append(ws)
      WORKSPACES.append(ws)
      workspaces.put(ws)
    for path in targets:
      run_module(path, workspaces, made[0].dir, args, bar_cls)
  except KeyboardInterrupt:
    print("\ninterrupted: finished mutants are cached; rerun to continue", file=sys.stderr)
    return 130
  finally:
    for ws in made:
      ws.remove()
    shutil.rmtree(JAX_CACHE, ignore_errors=True)
  print(f"wrote {write_report(args)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
