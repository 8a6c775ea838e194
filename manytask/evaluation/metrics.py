"""The GLUE average as BAM reports it. Each kind's own metrics live with the kind (``kinds/``)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def glue_average(per_task_primary: dict[str, float], excluded: Sequence[str] = ()) -> float:
    """Mean of per-task primary scores (Matthews for CoLA, Spearman for STS-B, accuracy elsewhere).

    A task with several dev sets (MNLI-m and MNLI-mm) enters once, as the mean of its sets.
    WNLI is excluded, as BAM does. Returns nan when no task is left.
    """
    kept = [v for k, v in per_task_primary.items() if k not in excluded]
    return float(np.mean(kept)) if kept else math.nan
