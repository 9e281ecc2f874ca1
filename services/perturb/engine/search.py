"""F2IPerturb search: the largest *verified* image radius r with U(r) < R_F, per image, batched.

Each round evaluates K candidate radii per unfinished image in one batched call. Only radii whose
bound was actually evaluated below R_F are ever returned (never an unverified midpoint), so the
answer is sound even where U is not monotone; monotonicity only makes the bracket shrink.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# evaluate(image_index [M] int, radius [M] float64) -> U [M] float64 (sound upper bounds)
Evaluator = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SearchConfig:
    """Radius search knobs."""

    relative_tolerance: float = 1e-3
    radii_per_round: int = 4
    max_rounds: int = 60
    smallest_radius: float = 1e-12  # below this the answer is 0
    largest_radius: float = 1e6  # stop expanding here (a flat encoder certifies everything)


@dataclass
class SearchOutcome:
    """Verified radii [B], number of bound evaluations, whether every image met the tolerance, and
    whether the deadline stopped the search (rather than its round limit)."""

    radius: np.ndarray
    evaluations: int
    finished: bool
    stopped_at_deadline: bool = False


def _candidates(
    lo: float,
    hi: float,
    guess: float,
    k: int,
    tol: float,
    first: bool,
    u_lo: float,
    u_hi: float,
    target: float,
    prev: tuple[float, float],
    up: bool,
    floor: float = 0.0,
) -> np.ndarray:
    if 0 < floor < target and u_lo >= floor:
        # U − floor is what grows with r (the floor: rounding error present at every radius); near the
        # floor U itself is nearly flat, and interpolating it would crawl
        u_lo, target, u_hi = u_lo - floor, target - floor, u_hi - floor
        prev = (prev[0], prev[1] - floor) if prev[1] > floor else (0.0, 0.0)
    if 0 < lo < hi < math.inf and 0 < u_lo < target <= u_hi < math.inf and u_hi > u_lo:
        # U is close to a power law in r: interpolate log U linearly in log r, probe tightly around it
        span = math.log(hi / lo)
        t = (math.log(target) - math.log(u_lo)) / (math.log(u_hi) - math.log(u_lo))
        est = math.log(lo) + min(max(t, 0.0), 1.0) * span
        width = max(0.4 * math.log1p(tol), 0.03 * span)
        # one probe: lean towards the end that did not move last round (avoids regula-falsi stalls)
        pts = np.exp(est + width * (np.linspace(-1.0, 1.0, k) if k > 1 else np.full(1, 1.0 if up else -1.0)))
        inside = pts[(pts > lo * (1 + 0.25 * tol)) & (pts < hi)]
        if inside.size:
            return inside
    if lo <= 0 < hi < math.inf and target < u_hi < math.inf:
        # U(0⁺) ≈ 0 (the floor, if any, taken off above) and U is typically convex, so U(r) ≈ r·U(hi)/hi from
        # below: aim just under that chord. Where U's true floor lies above the known one (a radius of 0), the
        # chord barely moves; the lowest probe, 64× further down, brackets fast.
        chord = hi * target / u_hi
        top = -0.5 * math.log1p(tol)
        pts = chord * np.exp(np.linspace(-0.5, top, k) if k > 1 else np.full(1, top))
        if k > 1:
            pts[0] /= 64.0
        return pts
    if math.isinf(hi) and lo > 0 and 0 < u_lo < target:
        # extrapolate U ≈ c·r^p; p from the last two verified points (CROWN grows faster than linearly)
        p = 1.5
        if 0 < prev[0] < lo and 0 < prev[1] < u_lo:
            p = min(max(math.log(u_lo / prev[1]) / math.log(lo / prev[0]), 1.0), 4.0)
        step = math.log(target / u_lo) / p
        # probes above the threshold cost the most (more unstable neurons): lean below the estimate
        est, width = math.log(lo) + step, 0.25 * step + math.log1p(tol)
        pts = np.exp(est + width * (np.linspace(-1.5, 0.0, k) if k > 1 else np.zeros(1)))
        return pts[pts > lo] if np.any(pts > lo) else lo * (1 + tol) * np.ones(1)
    if math.isinf(hi):
        if lo > 0:
            # a known lower radius (from a cheaper method) is first probed just above itself
            return lo * (1 + tol) * np.ones(1) if first else lo * 4.0 ** np.arange(1, k + 1)
        return guess * 2.0 ** (np.arange(k) - (k - 1) / 2)
    if lo <= 0:
        return hi * 8.0 ** -(np.arange(k) + 1.0)
    return lo * (hi / lo) ** (np.arange(1, k + 1) / (k + 1))


def search_radius(
    evaluate: Evaluator,
    feature_radius: np.ndarray,
    guess: np.ndarray,
    known_lower: np.ndarray | None = None,
    cfg: SearchConfig = SearchConfig(),
    deadline: float | None = None,
    seed: np.ndarray | None = None,
    floor: np.ndarray | None = None,
) -> SearchOutcome:
    """Largest verified r per image; ``known_lower`` radii count as verified (by another sound bound).

    ``floor`` [B], where given, is a lower bound of ``evaluate`` at every r > 0 (the served model's
    rounding error): an image whose floor reaches R_F gets 0 without a probe, and the probes aim with
    U − floor. It only steers the search: an answer is still a radius whose bound was evaluated below R_F.

    ``seed`` radii (e.g. a cheaper method's answer) are *not* trusted: the first round probes each
    seed s and s·(1 + tol) with this evaluator, which settles the search in one round when the
    answer lies between them, and brackets it otherwise.
    """
    b = feature_radius.shape[0]
    lo = np.zeros(b) if known_lower is None else known_lower.astype(np.float64).copy()
    hi = np.full(b, np.inf)
    u_lo, u_hi = np.zeros(b), np.full(b, np.inf)  # U at lo (0 if unknown) and at hi
    prev = [(0.0, 0.0)] * b  # the verified (radius, U) before the current lo
    up = np.zeros(b, dtype=bool)  # whether lo moved in the last round
    base = np.zeros(b) if floor is None else np.maximum(np.asarray(floor, dtype=np.float64), 0.0)
    u_lo = np.where(lo <= 0, base, u_lo)
    hopeless = (feature_radius <= 0) | ((lo <= 0) & (u_lo >= feature_radius))
    hi[hopeless] = 0.0
    lo[hopeless] = 0.0
    evaluations = 0
    first = np.ones(b, dtype=bool)
    tol = cfg.relative_tolerance
    for _ in range(cfg.max_rounds):
        todo = [i for i in range(b) if not _done(lo[i], hi[i], tol, cfg)]
        if not todo:
            return SearchOutcome(lo, evaluations, True)
        if deadline is not None and time.monotonic() > deadline:
            return SearchOutcome(lo, evaluations, False, stopped_at_deadline=True)
        rows, radii = [], []
        for i in todo:
            if first[i] and seed is not None and seed[i] > lo[i] and math.isinf(hi[i]):
                rows.append(np.full(2, i))
                radii.append(seed[i] * np.array([1.0, 1.0 + 0.999 * tol]))
                first[i] = False
                continue
            cand = _candidates(
                lo[i],
                hi[i],
                max(guess[i], cfg.smallest_radius),
                cfg.radii_per_round,
                tol,
                bool(first[i]),
                u_lo[i],
                u_hi[i],
                feature_radius[i],
                prev[i],
                bool(up[i]),
                float(base[i]),
            )
            cand = np.minimum(cand, cfg.largest_radius)
            rows.append(np.full(cand.shape, i))
            radii.append(cand)
            first[i] = False
        rows_a, radii_a = np.concatenate(rows), np.concatenate(radii)
        bound = evaluate(rows_a, radii_a)
        evaluations += len(radii_a)
        ok = bound < feature_radius[rows_a]
        for i in todo:
            sel = rows_a == i
            good = radii_a[sel & ok]
            up[i] = bool(good.size and good.max() > lo[i])
            if up[i]:
                j = np.argmax(np.where(sel & ok, radii_a, -np.inf))
                if u_lo[i] > 0:
                    prev[i] = (lo[i], u_lo[i])
                if good.size > 1:  # the runner-up of this round is a closer second point
                    j2 = np.argmax(np.where(sel & ok & (radii_a < radii_a[j]), radii_a, -np.inf))
                    if radii_a[j2] > prev[i][0] and bound[j2] > 0:
                        prev[i] = (radii_a[j2], bound[j2])
                lo[i], u_lo[i] = radii_a[j], bound[j]
            above = (sel & ~ok) & (radii_a > lo[i])
            if above.any():
                j = np.argmin(np.where(above, radii_a, np.inf))
                if radii_a[j] < hi[i]:
                    hi[i], u_hi[i] = radii_a[j], bound[j]
            elif hi[i] <= lo[i]:
                hi[i], u_hi[i] = np.inf, np.inf
    return SearchOutcome(lo, evaluations, False)


def _done(lo: float, hi: float, tol: float, cfg: SearchConfig) -> bool:
    if hi <= lo * (1 + tol) or lo >= cfg.largest_radius:
        return True
    return lo <= 0 and hi <= cfg.smallest_radius
