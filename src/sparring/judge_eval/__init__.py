"""`sparring judge-eval`: how good a judge is, measured before a run is spent on it (docs/judge-eval.md).

- `inputs.py`: preference pairs in TRL's format and response sets (K responses per prompt), from any
  prompt source or a run's samples.parquet;
- `measures.py`: the measures as small pure functions (accuracy with ties apart, log-loss, calibration,
  intransitive triples, Cohen's κ, position consistency, bootstrap intervals);
- `evaluation.py`: `evaluate_judge`, which asks the judges through the judge cache and returns the
  results as a JSON-ready dict;
- `page.py`: judge_eval.json, reliability.png and the HTML page (in the style of `sparring report`);
- `cli.py`: the subcommand.
"""
