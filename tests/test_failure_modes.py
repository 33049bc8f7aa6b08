"""Every bad input of tests/failure_cases.py, by its command: the expected exit status, one
clear line naming the flag or file, no traceback."""

import pytest

from tests.failure_cases import CASES, check


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_answered_clearly(case, tmp_path):
  ok, out = check(case, str(tmp_path))
  assert ok, (f"rc {out.rc} (want {case.rc}), want {case.says!r} in the output:\n"
              f"{out.err[-3000:]}\n{out.out[-1000:]}")
