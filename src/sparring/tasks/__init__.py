"""Tasks: everything one kind of prompt set brings with it, in one package.

A task owns what its prompts carry (their `meta`, and the prompt-source columns it comes from), how a
response to them is checked, the judge that turns those checks into preferences, and the evaluation
metric built on the same checks. Generic code (prompt loading, the evaluation plan, the commands, the
report) asks the task whether it applies to a prompt set instead of looking for the task's fields
itself.

One task today:

  ifeval  Google's IFEval verifiable instructions (sparring.tasks.ifeval): the checks, the judge
          `ifeval`, the metric `ifeval`

The shipped prompt sets are package data of `sparring.data`; the scripts that build them are not
installed (tools/data/ in the source tree).
"""
