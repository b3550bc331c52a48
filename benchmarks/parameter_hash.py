"""
A fingerprint of what training computes: the SHA-256 of every policy parameter's bytes after a
fixed run, for a few settings of ``benchmarks/throughput.py``. Run it at two commits to show that a
speed-up changed no bit of the result.

    python benchmarks/parameter_hash.py                        # 6000 steps, one torch thread
    python benchmarks/parameter_hash.py --flush-denormal false
    # the same at an older commit, with this script
    cp benchmarks/parameter_hash.py /tmp && git checkout 3d1215a && PYTHONPATH=benchmarks python /tmp/parameter_hash.py
"""

import argparse
import hashlib

import torch as th
from throughput import SETTINGS

from deep_sarsa import DeepSARSA

#: (setting of throughput.py, next_action) pairs: every variant, both settings
RUNS = [("step", "sampled"), ("zoo", "expected"), ("step", "stored")]


def parameter_hash(setting: str, next_action: str, steps: int, seed: int, flush_denormal: bool) -> str:
    """The first 16 hex digits of the SHA-256 of the policy's parameters after ``learn(steps)``."""
    kwargs = dict(SETTINGS[setting], seed=seed, device="cpu", flush_denormal=flush_denormal)
    model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action=next_action, **kwargs)  # type: ignore[arg-type]
    model.learn(steps)
    digest = hashlib.sha256(b"".join(param.detach().cpu().numpy().tobytes() for param in model.policy.parameters()))
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush-denormal", choices=["true", "false"], default="true")
    args = parser.parse_args()
    th.set_num_threads(1)
    for setting, next_action in RUNS:
        digest = parameter_hash(setting, next_action, args.steps, args.seed, args.flush_denormal == "true")
        print(f"{setting}/{next_action}: {digest}", flush=True)


if __name__ == "__main__":
    main()
