"""Options several commands share: `--json` and `--threshold-percentile`.

Reason to change: a shared option's name, meaning or checks.
"""

from __future__ import annotations

from typing import Annotated

import typer


def _open_percentile(value: float | None) -> float | None:
    if value is not None and not 0 < value < 100:
        raise typer.BadParameter(f"{value:g} is not within (0, 100)")
    return value


JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ThresholdPercentile = Annotated[
    float | None,
    typer.Option(
        callback=_open_percentile,
        help="Flag rows above this percentile of normal scores (0 < p < 100) instead of the model's threshold.",
    ),
]
