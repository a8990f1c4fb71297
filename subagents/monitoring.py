"""The monitoring subagent: is the champion doing worse in production than the model it replaced?

Live records carry the model version that served them. A two-proportion z-test compares the champion's success
rate with the previous version's over the window; a significant drop larger than ``min_drop`` is a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LiveStats:
    version: str
    successes: int
    total: int

    @property
    def rate(self) -> float:
        return self.successes / self.total if self.total else 0.0


@dataclass(frozen=True)
class Verdict:
    regressed: bool
    reason: str
    p_value: float | None = None


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare_live(
    champion: LiveStats, baseline: LiveStats, *, min_records: int = 30, alpha: float = 0.01, min_drop: float = 0.05
) -> Verdict:
    if champion.total < min_records or baseline.total < min_records:
        return Verdict(
            False,
            f"not enough live records yet ({champion.version}: {champion.total}, {baseline.version}: "
            f"{baseline.total}; {min_records} each needed)",
        )
    pooled = (champion.successes + baseline.successes) / (champion.total + baseline.total)
    se = math.sqrt(pooled * (1 - pooled) * (1 / champion.total + 1 / baseline.total))
    drop = baseline.rate - champion.rate
    # One-sided: is the champion worse? With no variance at all, any drop is certain.
    p = (0.0 if drop > 0 else 1.0) if se == 0 else _normal_sf(drop / se)
    figures = (
        f"{champion.version} {champion.rate:.1%} of {champion.total} vs {baseline.version} "
        f"{baseline.rate:.1%} of {baseline.total} (p={p:.4f})"
    )
    if drop >= min_drop and p < alpha:
        return Verdict(True, f"live success rate dropped: {figures}", p)
    return Verdict(False, f"live quality holds: {figures}", p)
