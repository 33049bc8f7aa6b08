"""The command line (inforeg_jax.flags) and config files (inforeg_jax.config_file): strict
flags, config files held to the flags' rules, ml_collections configs and the dataset presets
as such files, contradictions refused, a population's members and their folders."""

import os
import subprocess
import sys

import pytest

from inforeg_jax import methods
from inforeg_jax import datasets
from inforeg_jax.config import config_differences, make_config, preset_values
from inforeg_jax.config_file import read_config_file
from inforeg_jax.flags import make_parser, parse_flags, parse_members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def refused(argv, capsys, parse=parse_flags) -> str:
  """The one error line a command line is refused with (exit status 2, no traceback)."""
  with pytest.raises(SystemExit) as e:
    parse(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and "Traceback" not in err, err
  lines = err.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith("usage:"), err
  return lines[1].split("error: ", 1)[1]


def config_file(tmp_path, text: str) -> str:
  path = tmp_path / "cfg.py"
  path.write_text(text)
  return str(path)


# ---------------------------------------------------------------- flags


def test_presets_groups_and_overrides():
  cfg, _ = parse_flags(["--dataset=cremad", "--epochs=7", "--method=ogm_ge",
                        "--ogm_ge.noise=false"])
  assert (cfg.encoder, cfg.width, cfg.learning_rate, cfg.epochs) == ("resnet18", 64, 0.002, 7)
  assert cfg.ogm_ge.noise is False and cfg.ogm_ge.alpha == 0.8  # OGM-GE's CREMA-D default
  assert cfg.options is cfg.ogm_ge
  assert parse_flags(["--method=agm", "--agm.alpha=2"])[0].agm.alpha == 2.0
  assert parse_flags(["--method=agm", "--dataset=avmnist"])[0].agm.clamp is False  # its script
  assert parse_flags(["--method=agm"])[0].agm.clamp is True
  assert parse_flags(["--tiny"])[0].width == 4
  assert parse_flags(["--tiny", "--method=gblending"])[0].gblending.super_epoch == 2
  assert parse_flags(["--resume"])[0].resume is True
  assert parse_flags(["--resume=false"])[0].resume is False


def test_an_option_of_another_method_is_refused(capsys):
  line = refused(["--method=joint", "--agm.alpha=2"], capsys)
  assert "--agm.alpha is an option of another method than --method=joint" in line


def test_lists_make_members_each_in_its_own_workdir():
  members, _ = parse_members(["--method=agm", "--seeds=0,1", "--agm.alpha=1,2.5",
                              "--workdir=runs/x"])
  assert [(c.seed, c.agm.alpha) for c in members] == [(0, 1.0), (1, 1.0), (0, 2.5), (1, 2.5)]
  assert [c.resolved_workdir for c in members] == [
      os.path.join("runs/x", "agm.alpha=1.0", "seed0"),
      os.path.join("runs/x", "agm.alpha=1.0", "seed1"),
      os.path.join("runs/x", "agm.alpha=2.5", "seed0"),
      os.path.join("runs/x", "agm.alpha=2.5", "seed1")]
  # seeds alone: the single runs' own default workdirs
  seeds, _ = parse_members(["--method=joint", "--seeds=3,4"])
  assert [c.resolved_workdir for c in seeds] == [
      make_config(method="joint", seed=s).resolved_workdir for s in (3, 4)]
  # each member is the config its single run would have (but the workdir)
  single = make_config(method="agm", seed=1, **{"agm.alpha": 2.5})
  assert config_differences(members[3], single) == []
  assert parse_members(["--seed=2"])[0][0] == make_config(seed=2)
  assert parse_members(["--seeds=2"])[0][0] == make_config(seed=2)  # one value: one run


@pytest.mark.parametrize("flag, message", [
    ("--epochs=2,3", "--epochs takes one value"), ("--fusion=sum,concat", "--fusion"),
    ("--seeds=0,0", "lists a value twice"), ("--learning_rate=0.1,x", "expects float"),
    ("--method=joint,agm", "--method")])
def test_lists_of_program_settings_are_refused(flag, message, capsys):
  assert message in refused([flag], capsys, parse_members)
  with pytest.raises(SystemExit):
    parse_flags(["--seeds=0,1"])  # one run takes one value


@pytest.mark.parametrize("flag, message", [
    ("--fusion=late", "--fusion"), ("--window=sometimes", "--window"),
    ("--compute_dtype=fp8", "--compute_dtype"), ("--dataset=imagenet", "--dataset"),
    ("--resume=on", "true or false"), ("--resume=y", "true or false"),
    ("--ogm_ge.noise=enable", "true or false"), ("--epoch=2", "unrecognized"),
    ("--seed=-1", "--seed must be >= 0"), ("--width=0", "--width must be >= 1"),
    ("--eval_batch_size=0", "--eval_batch_size must be >= 1"),
    ("--inforeg.beta=x", "expects float"), ("--epochs=2.5", "expects int"),
    ("--inforeg.variant=nope", "--inforeg.variant"), ("--threshold=nan", "finite"),
    ("--learning_rate=inf", "finite"), ("--seed=99999999999", "--seed must be <="),
    ("--data_dir=x", "built in"), ("--method=nope", "--method must be one of")])
def test_bad_flags_exit_with_one_line(flag, message, capsys):
  assert message in refused([flag], capsys)


def test_flagfile(tmp_path, capsys):
  f = tmp_path / "flags"
  f.write_text("# a comment\n--method=agm\n--agm.alpha=3  # inline\n")
  cfg, _ = parse_flags([f"--flagfile={f}", "--epochs=2"])
  assert (cfg.method, cfg.agm.alpha, cfg.epochs) == ("agm", 3.0, 2)
  loop = tmp_path / "loop"
  loop.write_text(f"--epochs=2\n--flagfile={loop}\n")
  binary = tmp_path / "binary"
  binary.write_bytes(bytes(range(256)))
  for bad, message in ((loop, "includes itself"), (binary, "not a text file")):
    assert message in refused([f"--flagfile={bad}"], capsys)


def test_help_shows_the_dataset_defaults_without_importing_jax():
  text = make_parser(["--dataset=cremad"]).format_help()
  assert "(default: 50)" in text and "resnet18" in text and "--agm.alpha" in text
  assert "[list: one member each]" in text and "--seeds" in text
  assert "--config.<name>=value" in text and "--config.epochs" not in text
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--dataset=cremad", "--help"],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0 and "--inforeg.beta" in proc.stdout
  assert "jax" not in subprocess.run(
      [sys.executable, "-c", "import sys; from inforeg_jax import config, config_file, flags; "
       "print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"],
      cwd=ROOT, capture_output=True, text=True).stdout.replace("[]", "")


# ---------------------------------------------------------------- config files


def test_config_file_then_flags(tmp_path, capsys):
  f = config_file(tmp_path, "config = dict(method='agm', epochs=5, **{'agm.alpha': 2.0})\n")
  cfg, args = parse_flags([f"--config={f}", "--epochs=7"])
  assert (cfg.method, cfg.epochs, cfg.agm.alpha, args.config) == ("agm", 7, 2.0, f)
  # a method's options nested, as a ConfigDict's are; an int where a float belongs is a float
  config_file(tmp_path, "config = dict(method='agm', agm=dict(alpha=2), learning_rate=1)\n")
  assert parse_flags([f"--config={f}"])[0] == parse_flags(
      ["--method=agm", "--agm.alpha=2", "--learning_rate=1"])[0]
  for text, message in (("config = 3\n", "must define `config` as a dict"),
                        ("config = dict(nope=1)\n", "unknown setting(s) nope"),
                        ("1/0\n", "ZeroDivisionError: division by zero")):
    config_file(tmp_path, text)
    line = refused([f"--config={f}"], capsys)
    assert line.startswith(f"--config={f}") and message in line, line


@pytest.mark.parametrize("text, message", [
    ("epochs='5'", "epochs expects int, got '5'"),  # a string where a number belongs
    ("learning_rate='0.1'", "learning_rate expects float, got '0.1'"),
    ("epochs=2.5", "epochs expects int, got 2.5"),  # a float where an int belongs
    ("epochs=True", "epochs expects int, got True"),
    ("resume='true'", "resume expects true or false (a bool), got 'true'"),  # bool as a string
    ("resume=1", "resume expects true or false (a bool), got 1"),  # ... or an int
    ("learning_rate=[]", "learning_rate is an empty list"),
    ("epochs=[2, 3]", "epochs=[2, 3] is a list: epochs takes one value"),  # not a member setting
    ("fusion=('sum', 'concat')", "fusion=['sum', 'concat'] is a list: fusion takes one value"),
    ("nope=1", "unknown setting(s) nope"),
    ("learning_rate=float('nan')", "learning_rate must be a finite number; got nan"),
    ("threshold=float('inf')", "threshold must be a finite number; got inf"),
    ("learning_rate=10**400", "learning_rate must be a finite number; got 1000"),  # Overflow
    ("learning_rate=[0.1, 10**400]", "learning_rate must be a finite number; got 1000"),
    ("seed=[0, 0]", "seed lists a value twice: [0, 0]"),
    ("seed=[3]", "seed=[3] lists one value: one run is seed=3"),
    ("seed=[-1, 2]", "seed must be >= 0; got -1"),
    ("width=0", "width must be >= 1; got 0"),
    ("fusion='late'", "fusion must be one of concat, sum, film, gated; got 'late'"),
    ("method='nope'", "method must be one of"),
    ("epochs=None", "epochs expects int, got None"),
    ("method='joint', agm=dict(alpha=2)", "agm.alpha is an option of another method than "
     "--method=joint")])
def test_config_file_values_are_held_to_the_flags_rules(text, message, tmp_path, capsys):
  f = config_file(tmp_path, f"config = dict({text})\n")
  line = refused([f"--config={f}"], capsys, parse_members)
  assert line.startswith(f"--config={f}: ") and message in line, line


@pytest.mark.parametrize("text, message", [
    ("import sys\nsys.exit(0)\n", "called sys.exit(0) while being read"),
    ("def get_config():\n  raise SystemExit\n", "called sys.exit(None) while being read"),
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("def get_config():\n  return {}['x']\n", "KeyError: 'x'"),
    ("x = 1\n", "defines neither `config = dict(name=value, ...)` nor `get_config()`"),
    ("config = dict(epochs=2)\ndef get_config():\n  return config\n", "defines both"),
    ("get_config = 3\n", "get_config is not a function"),
    ("def get_config(:\n", "SyntaxError: invalid syntax (line 1)"),
    ("import no_such_module_here\n", "No module named 'no_such_module_here'"),
    ("config = dict(agm={1: 2})\n", "setting names are strings; got agm.1")])
def test_a_config_file_that_exits_raises_or_defines_nothing(text, message, tmp_path, capsys):
  f = config_file(tmp_path, text)
  line = refused([f"--config={f}"], capsys)
  assert line.startswith(f"--config={f}") and message in line, line


def test_config_file_lists_are_members_as_on_the_command_line(tmp_path, capsys):
  f = config_file(tmp_path, "config = dict(method='agm', seed=(0, 1), learning_rate=[0.01, 0.02],"
                  " agm=dict(alpha=[1, 2.5]), workdir='runs/x')\n")
  flags = ["--method=agm", "--seeds=0,1", "--learning_rate=0.01,0.02", "--agm.alpha=1,2.5",
           "--workdir=runs/x"]
  from_file, from_flags = parse_members([f"--config={f}"])[0], parse_members(flags)[0]
  assert len(from_file) == 8 and from_file == from_flags
  # one value in a list is refused, in the file and on the command line alike: a one-member
  # population would lie in <workdir>/seed3 where --seed=3's run lies in <workdir>
  config_file(tmp_path, "config = dict(seed=[3], workdir='runs/x')\n")
  assert "lists one value" in refused([f"--config={f}"], capsys, parse_members)
  assert "--seeds=3, lists one value: one run is --seeds=3" in refused(
      ["--seeds=3,"], capsys, parse_members)
  assert "has an empty value" in refused(["--seeds=0,,1"], capsys, parse_members)
  config_file(tmp_path, "config = dict(seed=[0, 1])\n")
  assert "is a list here" in refused([f"--config={f}"], capsys)  # one run takes one value


# ---------------------------------------------------------------- ml_collections configs


def test_ml_collections_config_and_its_overrides(tmp_path, capsys):
  pytest.importorskip("ml_collections")
  f = config_file(tmp_path, "import ml_collections\n\n\ndef get_config():\n"
                  "  config = ml_collections.ConfigDict()\n  config.method = 'agm'\n"
                  "  config.epochs = 5\n  config.agm = ml_collections.ConfigDict()\n"
                  "  config.agm.alpha = 2.0\n  config.seed = [0, 1]\n  return config\n")
  members, _ = parse_members([f"--config={f}", "--config.agm.alpha=3", "--config.epochs=6"])
  assert members == parse_members(["--method=agm", "--epochs=6", "--agm.alpha=3",
                                   "--seeds=0,1"])[0]
  # overrides are checked as their flags are, and must agree with the flags they restate
  assert "--config.epochs expects int, got 'x'" in refused(
      [f"--config={f}", "--config.epochs=x"], capsys, parse_members)
  assert "--config.agm.alpha must be >= 0; got -1.0" in refused(
      [f"--config={f}", "--config.agm.alpha=-1"], capsys, parse_members)
  assert "unrecognized arguments: --config.nope=1" in refused(
      [f"--config={f}", "--config.nope=1"], capsys, parse_members)
  # a ConfigDict's wrong types are refused as a dict's are
  config_file(tmp_path, "import ml_collections\n\n\ndef get_config():\n"
              "  return ml_collections.ConfigDict({'epochs': 2.5})\n")
  assert f"--config={f}: epochs expects int, got 2.5" == refused([f"--config={f}"], capsys)


@pytest.mark.parametrize("dataset", datasets.names())
def test_the_preset_files_are_the_presets(dataset):
  pytest.importorskip("ml_collections")
  path = os.path.join(CONFIGS, f"{dataset}.py")
  values = read_config_file(path)
  top = {k: v for k, v in preset_values(dataset).items() if "." not in k}
  preset = datasets.get(dataset).preset
  assert values == {"dataset": dataset, **preset} == {"dataset": dataset, **top}
  # the methods' own defaults on this dataset come with it, as with --dataset
  for method in methods.names():
    assert parse_flags([f"--config={path}", f"--method={method}"])[0] == parse_flags(
        [f"--dataset={dataset}", f"--method={method}"])[0], method


def test_a_preset_file_with_an_override_is_the_dataset_flag_with_that_flag():
  pytest.importorskip("ml_collections")
  assert parse_flags(["--config=experiments/configs/avmnist.py",
                      "--config.learning_rate=0.02"])[0] == parse_flags(
      ["--dataset=avmnist", "--learning_rate=0.02"])[0]


# Imports of ml_collections fail, the way an install without the [train] extra lacks it.
NO_ML_COLLECTIONS = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "  def find_spec(self, name, path, target=None):\n"
    "    if name.split('.')[0] == 'ml_collections':\n"
    "      raise ModuleNotFoundError('not installed: ' + name, name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from inforeg_jax.flags import parse_flags\n"
    "print(parse_flags(sys.argv[1:])[0].learning_rate)\n")


def test_a_configdict_file_without_ml_collections_is_one_line(tmp_path):
  run = lambda *argv: subprocess.run([sys.executable, "-c", NO_ML_COLLECTIONS, *argv], cwd=ROOT,
                                     capture_output=True, text=True, timeout=120)
  proc = run("--config=experiments/configs/avmnist.py")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[1:] == [
      "python -m experiments.run: error: --config=experiments/configs/avmnist.py is an "
      "ml_collections config and ml_collections is not installed: pip install -e '.[train]' "
      "(or write `config = dict(name=value, ...)`)"]
  plain = config_file(tmp_path, "config = dict(learning_rate=0.5)\n")  # a dict needs nothing
  proc = run(f"--config={plain}")
  assert proc.returncode == 0 and proc.stdout.strip() == "0.5", proc.stderr


# ---------------------------------------------------------------- contradictions


def test_flags_that_contradict_each_other_are_refused_at_once(tmp_path, capsys):
  assert refused(["--seed=1", "--seeds=2,3"], capsys, parse_members) == (
      "--seed=1 and --seeds=2,3 contradict each other: give one")
  assert parse_members(["--seed=2", "--seeds=2"])[0] == parse_members(["--seed=2"])[0]
  f = config_file(tmp_path, "config = dict(epochs=2)\n")
  assert refused([f"--config={f}", "--epochs=3", "--config.epochs=4"], capsys) == (
      "--epochs=3 and --config.epochs=4 contradict each other: give one")
  assert "no --config is given" in refused(["--config.epochs=3"], capsys)
  # --resume with --overwrite: at parse time, not when the run starts
  assert refused(["--resume", "--overwrite"], capsys).startswith(
      "--resume and --overwrite exclude each other")
  config_file(tmp_path, "config = dict(resume=True)\n")
  assert "exclude each other" in refused([f"--config={f}", "--overwrite"], capsys)
  assert parse_flags([f"--config={f}", "--overwrite=false"])[0].resume is True


def test_two_config_files_or_one_setting_given_twice_in_one_are_refused(tmp_path, capsys):
  # argparse keeps the last --config alone: the first file's settings would be lost unsaid
  a = config_file(tmp_path, "config = dict(epochs=5)\n")
  b = tmp_path / "b.py"
  b.write_text("config = dict(seed=3)\n")
  assert refused([f"--config={a}", f"--config={b}"], capsys) == (
      f"--config is given 2 times ({a}, {b}): a run reads one config file (they are not "
      "merged): give one")
  assert parse_flags([f"--config={a}", "--config", a])[0].epochs == 5  # one file twice: one
  assert refused(["--config="], capsys).startswith("--config= names no file")
  # one setting flat and nested in one file: neither silently wins
  f = config_file(tmp_path, "config = {'method': 'agm', 'agm': {'alpha': 2.0}, "
                            "'agm.alpha': 3.0}\n")
  assert refused([f"--config={f}"], capsys) == (
      f"--config={f}: agm.alpha is given twice (2.0 and 3.0): give it once")


def run_on_disk(folder) -> None:
  """A member's folder as a run leaves it (what `workdir.used` looks for)."""
  os.makedirs(folder)
  open(os.path.join(folder, "metrics.jsonl"), "w").close()


def test_a_resume_naming_another_layout_of_member_folders_is_refused(tmp_path, capsys):
  w = str(tmp_path / "w")
  run_on_disk(os.path.join(w, "learning_rate=0.01", "seed0"))
  for argv, named in (
      (["--seeds=0,1"], os.path.join(w, "seed0")),  # the seeds directly
      (["--seeds=0", "--learning_rate=0.01"], w),  # one run in the workdir itself
      (["--method=agm", "--agm.alpha=1,2"], os.path.join(w, "agm.alpha=1.0", "seed0")),
      (["--learning_rate=0.01,0.02", "--momentum=0.8,0.9"],
       os.path.join(w, "learning_rate=0.01,momentum=0.8", "seed0"))):
    line = refused([f"--workdir={w}", "--resume", *argv], capsys, parse_members)
    assert line.startswith(f"--resume: the runs under {w} are "
                           f"{os.path.join(w, 'learning_rate=0.01', 'seed0')}, but this "
                           f"command names {named}"), line
  # the layout on disk: resumed (a member with a run), or a new member beside (fresh)
  for argv in (["--learning_rate=0.01,0.02"], ["--learning_rate=0.03,0.02", "--seeds=0,1"]):
    parse_members([f"--workdir={w}", "--resume", *argv])
  # the member's own folder, and a command without --resume (refused later if used)
  parse_members([f"--workdir={os.path.join(w, 'learning_rate=0.01', 'seed0')}", "--resume"])
  parse_members([f"--workdir={w}", "--seeds=0,1"])
  # a workdir holding a run itself: a population under it is another layout
  single = str(tmp_path / "single")
  run_on_disk(single)
  assert f"the runs under {single} are {single}," in refused(
      [f"--workdir={single}", "--resume", "--seeds=0,1"], capsys, parse_members)
