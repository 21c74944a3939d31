"""When a job trains or publishes nothing on purpose (it is skipped, not failed), and what it
says: one pure function of what the job knows so far.

The runner asks at three points, each time with more known: before loading (unchanged data),
after loading (too few rows) and before publishing (a rollback that holds). A rule whose fact
is not known yet does not apply.

- Unchanged data (the live version's fingerprint, the spec included): an `interval` run is
  skipped; so is a Train request, unless it forces, names another model kind or reads one
  given file (`data_path`). Other triggers only start when the data changed.
- Too few rows: fewer than `min_samples`, unless forced. (Routed groups below it are the
  pipeline's to leave out; a run with no group left is skipped there.)
- A rollback that holds: a run started by the data it rolled away from, or by the clock, is
  not published; a Train request, or the data changing after the rollback, ends the hold.

Reason to change: when a job is skipped and why.
"""

from __future__ import annotations

from dataclasses import dataclass

# The triggers that end a rollback's hold instead of being held by it.
ENDS_A_HOLD = ("api", "data_changed_after_rollback")


@dataclass(frozen=True)
class JobFacts:
    """What a job knows when it asks whether to go on."""

    trigger: str
    fingerprint: str  # of this run's spec and data
    live_version: int = 0  # 0: no version yet
    live_fingerprint: str = ""  # what the live version was trained on
    force: bool = False
    other_kind: bool = False  # the Train request named a model kind
    data_path: bool = False  # the Train request named one file to train on
    min_samples: int = 0
    rows: int | None = None  # known once the data is loaded
    rollback_holds: int | None = None  # the version a holding rollback restored; asked before publishing

    @property
    def unchanged_since(self) -> int:
        """The live version trained on this very data and spec; 0 when there is none."""
        if self.live_version and self.live_fingerprint == self.fingerprint and not self.data_path:
            return self.live_version
        return 0


def skip_reason(facts: JobFacts) -> str | None:
    """Why the job stops here without training or publishing; None: it goes on."""
    version = facts.unchanged_since
    if version and facts.trigger == "interval":
        return f"data unchanged since version {version}"
    if version and facts.trigger == "api" and not facts.force and not facts.other_kind:
        return f"data and spec unchanged since version {version}; Train with force to train again"
    if facts.rows is not None and facts.rows < facts.min_samples and not facts.force:
        return f"not enough samples: {facts.rows} < min_samples {facts.min_samples}"
    if facts.rollback_holds is not None and facts.trigger not in ENDS_A_HOLD:
        return f"a rollback to version {facts.rollback_holds} holds; this run is not published"
    return None
