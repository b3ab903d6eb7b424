"""The IFEval checks moved to sparring.tasks.ifeval.checks. This older import path is that very module
(the same module object, private names included), so code that imports or patches it keeps working."""

from __future__ import annotations

import sys

from sparring.tasks.ifeval import checks

sys.modules[__name__] = checks
