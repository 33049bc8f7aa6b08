"""The built wheel ships the library only (experiments/ and data_prep/ stay in the clone), with a
lean core; and the side commands say which extra to install when they run on the core."""

import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "inforeg_jax", "experiments", "data_prep",
           "tests")
# What the core install lacks (pyproject's extras), blocked the way a core install lacks them.
EXTRAS = ("orbax", "grain", "tqdm", "matplotlib", "sklearn", "tensorboardX", "scipy", "soundfile",
          "av", "tensorflow_datasets", "PIL", "ml_collections")
BLOCK = (
    "import sys, importlib.abc, runpy\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "  def find_spec(self, name, path, target=None):\n"
    f"    if name.split('.')[0] in {EXTRAS!r}:\n"
    "      raise ModuleNotFoundError('not in the core install: ' + name, name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def _setuptools_ok() -> bool:
  try:
    import setuptools
  except ImportError:
    return False
  return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel built from a copy of the sources (so the build leaves nothing in the clone)."""
  if not _setuptools_ok():
    pytest.skip("building offline needs setuptools>=77 (the [test] extra installs it)")
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  src.mkdir()
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "golden")
  for name in SOURCES:
    path = os.path.join(ROOT, name)
    if os.path.isdir(path):
      shutil.copytree(path, src / name, ignore=ignore)
    else:
      shutil.copy(path, src / name)
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                         "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (path,) = (tmp / "dist").glob("inforeg_jax-*.whl")
  return path


@pytest.mark.slow
def test_the_wheel_holds_only_the_library(wheel):
  with zipfile.ZipFile(wheel) as z:
    tops = {name.split("/")[0] for name in z.namelist()}
    meta = email.message_from_bytes(
        z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
  assert {t for t in tops if not t.endswith(".dist-info")} == {"inforeg_jax"}
  requires = meta.get_all("Requires-Dist")
  core = sorted(r.split(">")[0].split("[")[0].strip() for r in requires if "extra ==" not in r)
  assert core == ["flax", "jax", "numpy", "optax"]
  extra_of = {r.split(">")[0].split("[")[0].split(";")[0].strip(): r.split('extra == "')[1][:-1]
              for r in requires if "extra ==" in r and "inforeg-jax" not in r}
  assert extra_of["tensorflow-datasets"] == "tfds" and extra_of["scikit-learn"] == "analysis"
  assert extra_of["orbax-checkpoint"] == "train" and extra_of["grain"] == "train"


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_as_one_package(wheel, tmp_path):
  venv = tmp_path / "venv"
  made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                        capture_output=True, text=True, timeout=120)
  if made.returncode != 0:
    pytest.skip(f"cannot create a venv here: {made.stderr.strip()[-300:]}")
  python = str(venv / "bin" / "python")
  proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                         "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (site,) = venv.glob("lib/python*/site-packages")
  tops = {p.name for p in site.iterdir()} - {"__pycache__"}
  assert {t for t in tops if not t.endswith(".dist-info")} == {"inforeg_jax"}, tops
  assert len(tops) == 2
  # The library imports from the venv (its dependencies from this one); experiments does not.
  here = next(p for p in sys.path if p.endswith("site-packages"))
  (site / "deps.pth").write_text(here + "\n")
  check = ("import inforeg_jax, importlib.util\n"
           "assert inforeg_jax.__file__.startswith(%r), inforeg_jax.__file__\n"
           "from inforeg_jax import inforeg_transform\n"
           "assert importlib.util.find_spec('experiments') is None\n"
           "assert importlib.util.find_spec('data_prep') is None\n" % str(site))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([python, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("module,args", [("experiments.sweep", ["--out=x"]),
                                         ("experiments.analyze", ["traces", "x", "--out=y"]),
                                         ("experiments.bench", ["--mode=population",
                                                                "--tiny"])])
def test_side_commands_on_the_core_install_name_the_extra(module, args):
  proc = subprocess.run([sys.executable, "-c", BLOCK, module, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      f"error: {module} needs the [train] extra: pip install -e '.[train]'"]


def test_table_runs_on_the_core_install(tmp_path):
  proc = subprocess.run([sys.executable, "-c", BLOCK, "experiments.table", str(tmp_path)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.stderr.strip().splitlines() == [f"error: no summary.json under {tmp_path}"]


def test_dir_lists_the_public_api():
  import inforeg_jax
  assert set(inforeg_jax.__all__) <= set(dir(inforeg_jax)), dir(inforeg_jax)
  assert "__version__" in dir(inforeg_jax)


def test_citation_cff_cites_the_software_and_the_paper():
  """CITATION.cff is CFF 1.2.0 with its required keys, this version, and the paper."""
  yaml = pytest.importorskip("yaml")
  import inforeg_jax
  with open(os.path.join(ROOT, "CITATION.cff")) as f:
    cff = yaml.safe_load(f)
  assert {"cff-version", "message", "title", "authors"} <= set(cff)
  assert cff["cff-version"] == "1.2.0" and cff["title"] == "inforeg-jax"
  assert str(cff["version"]) == inforeg_jax.__version__ and cff["license"] == "Apache-2.0"
  assert cff["authors"] == [{"name": "inforeg-jax developers"}]
  paper = cff["preferred-citation"]
  assert paper["title"] == ("Adaptive Unimodal Regulation for Balanced Multimodal Information "
                            "Acquisition") and paper["year"] == 2025
  assert [a["family-names"] for a in paper["authors"]] == ["Huang", "Wei", "Yang", "Hu"]
  assert all({"type", "title", "authors"} <= set(r) for r in [paper, *cff["references"]])
