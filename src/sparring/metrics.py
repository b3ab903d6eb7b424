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
