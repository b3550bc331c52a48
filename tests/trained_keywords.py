"""The DeepSARSA keywords a finished Optuna trial of ``benchmarks/tune.py`` trained with, rebuilt from its parameters."""

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from deep_sarsa.zoo.sampler import convert_deep_sarsa_params


def trained_keywords(trial: FrozenTrial, task: str, space: str = "zoo", next_action: str | None = None) -> dict[str, Any]:
    """
    :param trial: a finished trial of a study of ``task``
    :param space: the study's ``--space``
    :param next_action: the study's ``--next-action`` (None where its trials sample the variant)
    :return: the keywords its objective gave DeepSARSA on top of the task's (``harness.hyperparameters_of``)
    """
    import harness
    import tune

    if space == "near-preset":
        return tune.sample_near_preset(optuna.trial.FixedTrial(trial.params), task, next_action)
    keywords = convert_deep_sarsa_params(trial.params, harness.hyperparameters_of(task).get("policy_kwargs"))
    if "learning_starts" in trial.user_attrs:
        keywords["learning_starts"] = int(trial.user_attrs["learning_starts"])
    return keywords
