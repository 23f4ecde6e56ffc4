"""Change the served model on evidence: the labelled gate, live guards, and the commands that
move a version from candidate to serving (``python -m imgcls.lifecycle``; README "Changing the
model in production", docs/lifecycle.md).

- ``params``: params.yaml ``lifecycle``, strict;
- ``gate``: the candidate against the serving version on the gate set (paired statistics);
- ``live``: the API replicas' metrics, and the live guards of a roll-out step;
- ``controller``: status, canary, shadow, promote, rollback over a repository and a Triton;
- ``rollout``: gate → shadow → canary steps → promote, rolling back by itself;
- ``__main__``: the command line and its exit codes.
"""

from .controller import Controller
from .params import GateParams, GuardParams, LifecycleParams, RolloutParams

__all__ = ["Controller", "GateParams", "GuardParams", "LifecycleParams", "RolloutParams"]
