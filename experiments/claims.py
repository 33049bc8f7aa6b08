"""Claims about a difference between two methods under protocol v2: every method on F speaker
folds (each fold its own held-out test speaker and test set) x S seeds, every comparison paired
with its reference on the same (fold, seed) and the same test pairs.

- `paired_difference`: the claim's interval, a t-interval on the F fold means of the difference
  (df = F - 1). The fold is the top level (only F independent speakers), and a fold mean already
  carries that fold's seed and test-clip noise.
- `holm`, `claims`: a pre-registered family of k comparisons: Holm's adjusted p-values, and each
  comparison's interval at the level that makes "the corrected interval excludes 0" exactly
  Holm's rejection. A win or a loss is a corrected one.
- `clip_bootstrap`: a descriptive hierarchical bootstrap (folds, then seeds within each drawn
  fold, then recordings with all their pairs within each drawn fold); not the claim's interval.
- `simulate_coverage`: the design simulated with a known difference and known variance at each
  level; how often each interval holds the difference (../shared/notes/STATISTICS.md: "show
  coverage, do not assume it").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from scipy import stats as st


class Paired(NamedTuple):
  mean: float  # mean of the F x S paired differences (= mean of the fold means)
  fold_means: np.ndarray  # [F]: each fold's mean difference over its seeds
  ci95: tuple[float, float]  # t-interval on the fold means, df = F - 1
  p: float  # two-sided p-value of the one-sample t-test of the fold means against 0


class Holm(NamedTuple):
  p_adjusted: np.ndarray  # Holm's step-down adjusted p-values, in the input order
  reject: np.ndarray  # bool: p_adjusted <= alpha
  levels: np.ndarray  # each comparison's corrected confidence level


class Claim(NamedTuple):
  mean: float
  ci_raw: tuple[float, float]  # at 1 - alpha, uncorrected
  p: float
  p_adjusted: float  # Holm over the family
  level: float  # the corrected interval's level
  ci_corrected: tuple[float, float]
  verdict: str  # "wins", "loses" or "undecided", from ci_corrected alone


class Bootstrap(NamedTuple):
  mean: float  # the observed mean difference
  ci95: tuple[float, float]  # percentile interval


class Coverage(NamedTuple):
  primary: float  # share of repetitions whose `paired_difference` interval holds the difference
  primary_half_width: float  # its mean half-width
  # a t-interval over the F x S differences as independent units (df = FS - 1): wrong, it
  # ignores the fold level; kept as the contrast
  independent: float
  independent_half_width: float
  bootstrap: float | None  # `clip_bootstrap` over the first bootstrap_reps repetitions
  bootstrap_half_width: float | None
  simulated_mean: float  # the mean difference over every simulated study (the simulator's check)


def _fold_interval(fold_means: np.ndarray, level: float) -> tuple[tuple[float, float], float]:
  """The t-interval at `level` on the fold means (df = F - 1) and the t-test's two-sided p."""
  f = len(fold_means)
  mean = float(fold_means.mean())
  se = float(fold_means.std(ddof=1)) / np.sqrt(f)
  if se == 0:  # every fold the same: the interval is the point, the test is decided by it
    return (mean, mean), float(mean == 0)
  half = float(st.t.ppf(0.5 + level / 2, f - 1) * se)
  return (mean - half, mean + half), float(2 * st.t.sf(abs(mean) / se, f - 1))


def _fold_means(a, b) -> np.ndarray:
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.shape != b.shape:
    raise ValueError(f"a and b differ in shape: {a.shape} vs {b.shape}")
  if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
    raise ValueError(f"accuracies must be [folds, seeds] with 2 folds or more, got {a.shape}")
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    raise ValueError("accuracies contain NaN or inf")
  return (a - b).mean(axis=1)


def paired_difference(a, b, level: float = 0.95) -> Paired:
  """Method minus reference, paired by (fold, seed): a and b are accuracies [F, S] on the same
  test pairs. The interval is a t-interval on the F fold means (df = F - 1) at `level`
  (the field keeps its name ci95), with the two-sided p-value of the t-test on them."""
  fold_means = _fold_means(a, b)
  ci, p = _fold_interval(fold_means, level)
  return Paired(float(fold_means.mean()), fold_means, ci, p)


def holm(p_values, alpha: float = 0.05) -> Holm:
  """Holm's step-down procedure over k p-values. Sorted, p_adj_(i) = max_{j<=i} min(1,
  (k - j + 1) p_(j)); rejected where p_adj <= alpha. The corrected level of the comparison at
  step i is 1 - alpha / (k - min(i, i*) + 1), i* the first step that fails to reject: its
  interval excludes 0 exactly when Holm rejects (for a test dual to its interval)."""
  p = np.asarray(p_values, float)
  if p.ndim != 1 or p.size == 0 or not np.all((p >= 0) & (p <= 1)):
    raise ValueError("p_values must be a non-empty 1-D array of numbers in [0, 1]")
  k = p.size
  order = np.argsort(p, kind="stable")
  steps = np.arange(1, k + 1)
  adjusted = np.maximum.accumulate(np.minimum(1.0, (k - steps + 1) * p[order]))
  reject = adjusted <= alpha
  first_fail = steps[~reject][0] if not reject.all() else k + 1
  levels = 1 - alpha / (k - np.minimum(steps, first_fail) + 1)
  out = [np.empty(k), np.empty(k, bool), np.empty(k)]
  for dst, src in zip(out, (adjusted, reject, levels)):
    dst[order] = src
  return Holm(*out)


def claims(family: Mapping[str, tuple], alpha: float = 0.05) -> dict[str, Claim]:
  """Each comparison of a pre-registered family, name -> (a, b) accuracies [F, S] of a method
  and its reference: the raw interval at 1 - alpha, Holm's adjusted p over the family, the
  interval at Holm's corrected level, and the verdict: "wins" or "loses" only where the
  corrected interval excludes 0 (then exactly where Holm rejects), else "undecided"."""
  names = list(family)
  fold_means = [_fold_means(*family[n]) for n in names]
  raw = [_fold_interval(m, 1 - alpha) for m in fold_means]
  h = holm([p for _, p in raw], alpha)
  out = {}
  for i, n in enumerate(names):
    (lo, hi), _ = _fold_interval(fold_means[i], float(h.levels[i]))
    verdict = "wins" if lo > 0 else "loses" if hi < 0 else "undecided"
    out[n] = Claim(float(fold_means[i].mean()), raw[i][0], raw[i][1], float(h.p_adjusted[i]),
                   float(h.levels[i]), (lo, hi), verdict)
  return out


def _multiplicities(rng, n: np.ndarray) -> np.ndarray:
  """[*n.shape, max n]: how often each of a row's n items is drawn in n draws with replacement
  (zero past a row's own n)."""
  width = int(n.max())
  picks = rng.integers(0, n[..., None], n.shape + (width,))
  rows = np.arange(n.size).reshape(n.shape)[..., None]
  keep = np.arange(width) < n[..., None]  # a row of n items takes its first n draws
  flat = (rows * width + picks)[keep]
  return np.bincount(flat, minlength=n.size * width).reshape(n.shape + (width,))


def _hierarchical_draws(sums, counts, n_clips, draws: int, rng) -> np.ndarray:
  """[draws] bootstrap means. sums [F, S, C]: each clip's summed pair differences per run;
  counts [F, C]: its pairs; n_clips [F]: clips per fold (a fold's clips first, zero padded).
  A draw: F folds, then S seeds and the fold's clips for each drawn fold, the clip draw shared
  by the drawn seeds (one test set); a fold's value is its drawn pairs' mean difference
  averaged over its drawn seeds, the draw's the mean over the drawn folds."""
  f, s, c = sums.shape
  chunk = max(1, 2_000_000 // (f * s * c))  # ~16 MB of gathered sums at a time
  out = np.full(draws, np.nan)  # (a draw left out would show)
  for start in range(0, draws, chunk):
    b = min(chunk, draws - start)
    folds = rng.integers(0, f, (b, f))
    seed_w = _multiplicities(rng, np.full((b, f), s))
    clip_w = _multiplicities(rng, n_clips[folds])
    per_clip = np.einsum("bjs,bjsc->bjc", seed_w, sums[folds])
    value = (clip_w * per_clip).sum(-1) / (s * (clip_w * counts[folds]).sum(-1))
    out[start:start + b] = value.mean(-1)
  return out


def percentile_95(values) -> tuple[float, float]:
  """The percentile 95% interval of bootstrap draws: their 2.5% and 97.5% quantiles."""
  lo, hi = np.quantile(values, [0.025, 0.975])
  return float(lo), float(hi)


def clip_bootstrap(correct_a, correct_b, clips, draws: int = 2000, seed: int = 0) -> Bootstrap:
  """Percentile 95% interval of the mean accuracy difference, resampling folds, then seeds
  within each drawn fold, then recordings (clips, each with all its test pairs) within each
  drawn fold; never pairs one by one. correct_a, correct_b: bool [F, S, N], each run's
  per-test-pair correctness, paired; clips: int [F, N], the recording of each test pair's
  audio. Descriptive, not the claim: resampling every level counts the within-fold noise twice
  (a fold mean already carries it) while 6 folds make a percentile interval short at the top;
  simulated at 6 x 5 (500 studies) it covered 0.99 when seeds dominate, 0.89 when folds do."""
  a, b, ids = np.asarray(correct_a), np.asarray(correct_b), np.asarray(clips)
  if a.shape != b.shape or a.ndim != 3:
    raise ValueError(f"correct_a and correct_b must share a [F, S, N] shape: {a.shape}, {b.shape}")
  if ids.shape != (a.shape[0], a.shape[2]) or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"clips must be integers [F, N] = {(a.shape[0], a.shape[2])}, got "
                     f"{ids.dtype} {ids.shape}")
  diff = a.astype(float) - b.astype(float)
  local = [np.unique(row, return_inverse=True)[1] for row in ids]
  n_clips = np.array([x.max() + 1 for x in local])
  width = int(n_clips.max())
  counts = np.stack([np.bincount(x, minlength=width) for x in local]).astype(float)
  sums = np.stack([[np.bincount(x, weights=d, minlength=width) for d in fold]
                   for x, fold in zip(local, diff)])
  values = _hierarchical_draws(sums, counts, n_clips, draws, np.random.default_rng(seed))
  return Bootstrap(float(diff.mean()), percentile_95(values))


def simulate_coverage(difference: float = 0.02, sd_fold: float = 0.01, sd_seed: float = 0.016,
                      sd_clip: float = 0.04, churn: float = 0.2, folds: int = 6, seeds: int = 5,
                      clips: int = 500, pairs_per_clip: int = 6, reps: int = 2000,
                      bootstrap_reps: int = 0, draws: int = 1000, seed: int = 0) -> Coverage:
  """Coverage of the 95% intervals over `reps` simulated studies with a known `difference`.

  Each fold's test set is `clips` recordings x `pairs_per_clip` pairs. A pair's outcome
  difference (method right and reference wrong: +1, the reverse: -1, else 0) has mean
  mu = difference + fold effect + seed effect (per fold and seed) + clip effect (per recording,
  shared by the seeds), normal with sds sd_fold, sd_seed, sd_clip; P(+1) = (churn + mu) / 2,
  P(-1) = (churn - mu) / 2: churn is the share of pairs on which the two runs disagree (mu is
  clipped to +-churn; at the defaults that moves the mean by < 1e-6). Within a fold and seed the
  pairs add a binomial sd ~ sqrt(churn / N) to a run's difference (0.008 at the defaults), on
  top of sd_seed. The bootstrap, at `draws` draws, runs on the first bootstrap_reps studies."""
  data_rng, boot_rng = np.random.default_rng(seed).spawn(2)
  n = clips * pairs_per_clip
  chunk = max(1, 2_000_000 // (folds * seeds * clips))
  d = np.full((reps, folds, seeds), np.nan)
  boot = []
  for start in range(0, reps, chunk):
    b = min(chunk, reps - start)
    mu = (difference + data_rng.normal(0, sd_fold, (b, folds, 1, 1))
          + data_rng.normal(0, sd_seed, (b, folds, seeds, 1))
          + data_rng.normal(0, sd_clip, (b, folds, 1, clips)))
    mu = np.clip(mu, -churn, churn)
    plus = data_rng.binomial(pairs_per_clip, (churn + mu) / 2)
    # given `plus`, the rest are -1 with P(-1) / P(not +1)
    minus = data_rng.binomial(pairs_per_clip - plus, (churn - mu) / (2 - churn - mu))
    sums = (plus - minus).astype(float)  # [b, F, S, C]: each clip's summed differences
    d[start:start + b] = sums.sum(-1) / n
    counts = np.full((folds, clips), float(pairs_per_clip))
    for i in range(max(0, min(b, bootstrap_reps - start))):
      values = _hierarchical_draws(sums[i], counts, np.full(folds, clips), draws, boot_rng)
      boot.append(percentile_95(values))

  primary = np.array([paired_difference(x, np.zeros_like(x)).ci95 for x in d])
  flat = d.reshape(reps, -1)
  half = (st.t.ppf(0.975, flat.shape[1] - 1) * flat.std(axis=1, ddof=1)
          / np.sqrt(flat.shape[1]))
  independent = flat.mean(axis=1)[:, None] + np.stack([-half, half], axis=1)

  def cover(ci):
    return float(np.mean((ci[:, 0] <= difference) & (difference <= ci[:, 1])))

  def half_width(ci):
    return float(np.mean(ci[:, 1] - ci[:, 0]) / 2)

  boot = np.array(boot) if boot else None
  return Coverage(cover(primary), half_width(primary), cover(independent),
                  half_width(independent), cover(boot) if boot is not None else None,
                  half_width(boot) if boot is not None else None, float(d.mean()))
