"""MU-Diff bundle components: data pipeline, networks, diffusion, training, evaluation.

The command lines are ``python -m scripts <command>`` (``scripts.commands``).
"""

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # run as `python -m scripts.<module>`: a command's name before 0.7.0 gets a pointer
    from scripts.commands import refuse_moved_command

    refuse_moved_command(getattr(_sys, "orig_argv", ()))
