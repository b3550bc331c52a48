"""``python -m deep_sarsa.cli``: the ``deep-sarsa`` command."""

import sys

from deep_sarsa.cli.parser import main

sys.exit(main())
