"""The page's view models, which live with the operations that build them (kept importable here)."""

from airflow_opportunity_provider.sync_state.views import (
    LOCAL_STATE_ID,
    OUTCOME_NAMES,
    CodeCount,
    OutcomeCounts,
    ProblemRow,
    RunRow,
    StateLocation,
    SyncDetail,
    SyncList,
    SyncRow,
    UnreachableState,
)

__all__ = [
    "LOCAL_STATE_ID",
    "OUTCOME_NAMES",
    "CodeCount",
    "OutcomeCounts",
    "ProblemRow",
    "RunRow",
    "StateLocation",
    "SyncDetail",
    "SyncList",
    "SyncRow",
    "UnreachableState",
]
