"""Deep SARSA for Stable-Baselines3."""

from stable_baselines3.dqn.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.finite import NonFiniteError
from deep_sarsa.safe_pickle import UnsafeFileError

__version__ = "0.3.0"

__all__ = ["CnnPolicy", "DeepSARSA", "MlpPolicy", "MultiInputPolicy", "NonFiniteError", "UnsafeFileError", "__version__"]
