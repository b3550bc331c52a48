"""
The ``deep-sarsa`` command: train, evaluate, watch and plot DeepSARSA agents.

Its entry point is :func:`deep_sarsa.cli.parser.main` (also ``python -m deep_sarsa.cli``), and its
``--help`` text :data:`deep_sarsa.cli.parser.DESCRIPTION`, plain text. One module per command
(:mod:`~deep_sarsa.cli.train`, with ``--resume``; :mod:`~deep_sarsa.cli.evaluate`;
:mod:`~deep_sarsa.cli.enjoy`; :mod:`~deep_sarsa.cli.plot`), over :mod:`~deep_sarsa.cli.evaluations`
and :mod:`~deep_sarsa.cli.run_folder`, which they share. This file imports none of them. What the
command does itself and what it leaves to rl-zoo3 (``python -m deep_sarsa.zoo``), and why, is
written in docs/cli.md.
"""
