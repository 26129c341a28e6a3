"""``python -m trio_rack``: the same command as the ``trio-rack`` console script.

The worker supervisor starts its workers this way (``sys.executable -m trio_rack``), which
works whether or not the console script is on ``PATH``.
"""

from .cli import main

raise SystemExit(main())
