"""Every bad input of tests/failure_cases.py, by its command: the expected exit status, one
clear line naming the flag or file, no traceback."""

import pytest

from tests.failure_cases import CASES, check


# Ctrl-C mid-run: in full parallel suites the resumed run sometimes writes no checkpoint the
# case can see and then outlives SIGINT by 300 s (issue 11's note); passes alone in ~24 s.
# Skipped in the suite until that is understood; `python -m tests.failure_cases` still runs it.
FLAKY = {"Ctrl-C mid-run": "open: a resumed run outliving SIGINT under load (see the note)"}
PARAMS = [pytest.param(c, marks=pytest.mark.skip(reason=FLAKY[c.name])) if c.name in FLAKY
          else c for c in CASES]


@pytest.mark.parametrize("case", PARAMS, ids=[c.name for c in CASES])
def test_bad_input_is_answered_clearly(case, tmp_path):
  ok, out = check(case, str(tmp_path))
  assert ok, (f"rc {out.rc} (want {case.rc}), want {case.says!r} in the output:\n"
              f"{out.err[-3000:]}\n{out.out[-1000:]}")
