"""The stages of one iteration, one file each, small and typed in and out (docs/architecture.md):

    generate.py  π_t's K samples per prompt           -> samples.parquet
    judge.py     every pair's verdict                  -> preferences.parquet
    rows.py      the method's training rows            -> train.parquet
    train.py     π_{t+1} with the method's loss        -> policy/
    eval.py      held-out responses and metrics        -> eval/

Each is `stage(ctx, t) -> (outputs, metrics)` on a `context.Context`; sparring.loop lists them in order
and records what they return. They hand off through the run directory's files (sparring.tables).
"""
