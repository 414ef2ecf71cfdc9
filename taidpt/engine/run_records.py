"""What a run folder tells the table scripts: its training time, and mean ± std text over seeds."""
from __future__ import annotations

import os
import re
import statistics
from typing import List, Optional, Sequence

ELAPSED = re.compile(r"Elapsed: (\d+):(\d\d):(\d\d)")


def train_seconds(run_dir: str) -> Optional[float]:
    """The last ``Elapsed: H:MM:SS`` of the run's training log (None when it has none)."""
    path = os.path.join(run_dir, "log.txt")
    found = ELAPSED.findall(open(path).read()) if os.path.isfile(path) else []
    if not found:
        return None
    h, m, s = map(int, found[-1])
    return 3600 * h + 60 * m + s


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std) with two decimals; one value alone; ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
