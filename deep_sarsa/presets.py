"""
Reference hyperparameters.

``RL_ZOO_DQN`` holds rl-baselines3-zoo's DQN entries (``hyperparams/dqn.yml``) for the classic
control tasks, without the zoo-only keys (``n_timesteps``, ``policy``): since DeepSARSA accepts
every DQN keyword with the same meaning, each entry can be passed as is,
``DeepSARSA("MlpPolicy", "CartPole-v1", **RL_ZOO_DQN["CartPole-v1"])``.
"""

from typing import Any

_ACROBOT_AND_LUNAR_LANDER: dict[str, Any] = dict(
    learning_rate=6.3e-4,
    batch_size=128,
    buffer_size=50_000,
    learning_starts=0,
    gamma=0.99,
    target_update_interval=250,
    train_freq=4,
    gradient_steps=-1,
    exploration_fraction=0.12,
    exploration_final_eps=0.1,
    policy_kwargs=dict(net_arch=[256, 256]),
)

RL_ZOO_DQN: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs=dict(net_arch=[256, 256]),
    ),
    "MountainCar-v0": dict(
        learning_rate=4e-3,
        batch_size=128,
        buffer_size=10_000,
        learning_starts=1000,
        gamma=0.98,
        target_update_interval=600,
        train_freq=16,
        gradient_steps=8,
        exploration_fraction=0.2,
        exploration_final_eps=0.07,
        policy_kwargs=dict(net_arch=[256, 256]),
    ),
    # rl-zoo tunes Acrobot-v1 and LunarLander with the same entry
    "Acrobot-v1": _ACROBOT_AND_LUNAR_LANDER,
    "LunarLander-v3": _ACROBOT_AND_LUNAR_LANDER,
}


def rl_zoo_dqn(env_id: str) -> dict[str, Any]:
    """
    A copy of rl-zoo's DQN hyperparameters for ``env_id`` (safe to modify).

    :param env_id: one of ``RL_ZOO_DQN``'s keys
    :return: the keyword arguments
    """
    if env_id not in RL_ZOO_DQN:
        raise ValueError(f"env_id must be one of {sorted(RL_ZOO_DQN)}, got {env_id!r}")
    entry = RL_ZOO_DQN[env_id]
    return {**entry, "policy_kwargs": dict(entry["policy_kwargs"])}
