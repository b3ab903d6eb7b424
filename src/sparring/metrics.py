"""The evaluation metrics a run's summary reports, in their order. One definition shared by the loop
(summary.json), the report and `sparring share`; this module imports nothing, so the report reads it
without pulling in the training stack."""

SUMMARY_METRICS = (
    "prompt_strict",
    "instruction_strict",
    "prompt_loose",
    "instruction_loose",
    "win_rate_vs_base",
    "length_controlled_win_rate",
    "win_rate_vs_reference",
    "mean_response_tokens",
)


def summary_row(met: dict) -> dict:
    """An evaluation's metrics.json cut to SUMMARY_METRICS, with the intervals of those metrics: one
    iteration's row of summary.json."""
    row = {k: met.get(k) for k in SUMMARY_METRICS}
    row["intervals"] = {k: v for k, v in (met.get("intervals") or {}).items() if k in SUMMARY_METRICS}
    return row
