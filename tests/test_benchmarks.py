"""The benchmark harness runs a (tiny) job, resumes, and reports, so that it does not rot."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import harness

import deep_sarsa.deep_sarsa
from deep_sarsa import DeepSARSA, fast
from deep_sarsa.targets import sample_epsilon_greedy


def test_job_report_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(harness.TASKS, "CartPole-v1", dict(steps=512, eval_freq=256, reference="rl-zoo DQN 500"))
    for algorithm in ("dqn", "sarsa-stored"):
        path = harness.write_result(tmp_path, harness.train_job("CartPole-v1", algorithm, 0, 2))
        result = json.loads(path.read_text())
        assert [point[0] for point in result["curve"]] == [256, 512]
        assert result["steps"] == 512 and result["steps_per_second"] > 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/*.json")}
    grid = ["grid", "--tasks", "CartPole-v1", "--algorithms", "dqn", "sarsa-stored", "--seeds", "1", "--episodes", "2"]
    assert harness.main([*grid, "--runs", str(tmp_path)]) == 0  # everything is done already (the JSON files): nothing reruns
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/*.json")} == before
    output = tmp_path / "learning.md"
    harness.report(harness.argparse.Namespace(runs=tmp_path, output=output))
    text = output.read_text()
    assert "| CartPole-v1 | dqn | 1 |" in text and "| CartPole-v1 | sarsa-stored | 1 |" in text
    assert output.with_suffix(".png").stat().st_size > 1000


def test_taxi_jobs_use_masks_for_deep_sarsa_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(harness.TASKS, "Taxi-v4", dict(harness.TASKS["Taxi-v4"], steps=1200, eval_freq=1200))
    evaluated: list[str] = []
    for evaluator in ("evaluate_policy", "evaluate_masked_policy"):
        original = getattr(harness, evaluator)

        def recording(*args: object, _name: str = evaluator, _original: object = original, **kwargs: object) -> object:
            evaluated.append(_name)
            return _original(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(harness, evaluator, recording)
    for algorithm in ("dqn", "sarsa-sampled"):
        result = json.loads(harness.write_result(tmp_path, harness.train_job("Taxi-v4", algorithm, 0, 2)).read_text())
        assert result["steps"] == 1200 and len(result["curve"]) == 1
        assert result["hyperparameters"]["policy_kwargs"] == "{'net_arch': []}"  # HAND_SET's Q-table
    assert evaluated == ["evaluate_policy", "evaluate_masked_policy"]


def test_committed_dqn_and_grid_results_were_trained_with_the_keywords_the_harness_gives_now() -> None:
    # DQN's baseline and the grid's variants are reproducible by the commands RESULTS.md names: tuning a preset
    # (Taxi's, read from the presets file before HAND_SET) must not change what they train with
    root = Path(harness.__file__).parent
    checked = 0
    for path in sorted([*root.glob("runs/*/*/seed*.json"), *root.glob("validation/*/dqn/seed*.json")]):
        result = json.loads(path.read_text())
        if result["algorithm"].startswith("sarsa-preset") or result["task"] not in harness.TASKS:
            continue
        keywords = {key: str(value) for key, value in harness.hyperparameters_of(result["task"]).items()}
        recorded = {key: value for key, value in result["hyperparameters"].items() if key not in ("next_action", "loss")}
        assert recorded == keywords, path
        checked += 1
    assert checked >= 6 * 5 * 4 + 6 * 10  # the grid (6 tasks, 4 algorithms, 5 seeds) and DQN's validation runs


def test_committed_preset_validations_were_trained_with_the_shipped_presets() -> None:
    # validation.md's rows are the presets a user gets now: preset(task) and preset(task, next_action=VARIANT)
    from deep_sarsa.presets import preset

    root = Path(harness.__file__).parent
    algorithms: set[str] = set()
    for path in sorted(root.glob("validation/*/sarsa-preset*/seed*.json")):
        result = json.loads(path.read_text())
        variant = result["algorithm"].removeprefix("sarsa-preset").removeprefix("-") or None
        wanted = preset(result["task"], next_action=variant).hyperparameters
        # runs from before next_action_net picked a' with the online network, as the presets still do
        recorded = {"next_action_net": "online", **result["hyperparameters"]}
        assert recorded == {key: str(value) for key, value in wanted.items()}, path
        algorithms.add(result["algorithm"])
    assert "sarsa-preset" in algorithms and len(algorithms) >= 2, algorithms  # the presets and at least one variant


@pytest.mark.parametrize("task", [task for task in harness.TASKS if task not in harness.LECTURE_TASKS])
def test_dqn_accepts_the_harness_keywords_of_every_task(task: str) -> None:
    from stable_baselines3 import DQN

    try:
        env = harness.make_env(task)
    except (gym.error.DependencyNotInstalled, ModuleNotFoundError):  # LunarLander without Box2D: check the keywords
        env = gym.make("CartPole-v1")  # on another env with discrete actions
    model = DQN("MlpPolicy", env, device="cpu", **harness.hyperparameters_of(task))
    assert model.batch_size == harness.hyperparameters_of(task)["batch_size"]


def test_the_lecture_task_runs_deep_sarsa_only_and_keeps_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        harness.TASKS, "MountainCar-v0-lecture", dict(harness.TASKS["MountainCar-v0-lecture"], steps=400, eval_freq=400)
    )
    path = harness.write_result(tmp_path, harness.train_job("MountainCar-v0-lecture", "sarsa-sampled", 0, 1))
    result = json.loads(path.read_text())
    assert result["steps"] == 400 and result["hyperparameters"]["target_update_interval"] == "(10, 'episode')"
    assert DeepSARSA.load(path.with_suffix(".zip")).policy.optimizer.__class__.__name__ == "AdamW"
    args = harness.argparse.Namespace(
        tasks=["MountainCar-v0-lecture"], algorithms=harness.ALGORITHMS, seeds=2, episodes=1, runs=Path("runs")
    )
    assert [(job[1], job[2]) for job in harness.jobs_of(args)] == [("sarsa-sampled", 0), ("sarsa-sampled", 1)]
    assert harness.hyperparameters_of("MountainCar-v0-lecture")["target_update_interval"] == (10, "episode")


def test_the_speed_scripts_run() -> None:
    """The speed scripts (throughput, ablation), a few steps past learning_starts, run."""
    import ablation
    import throughput

    wall, cpu = throughput.steps_per_second("sarsa-stored", "step", seed=0, steps=1040)
    assert wall > 0 and cpu > 0
    for variant in ("all plain", "direct_forward"):
        wall, cpu = ablation.steps_per_second(variant, "zoo", seed=0, steps=1040)
        assert wall > 0 and cpu > 0 and not fast.PLAIN  # the switches were put back
    saving, rate = ablation.paired_saving("zero_grad", "zoo", seed=0, steps=300)
    assert -1 < saving < 1 and rate > 0 and not fast.PLAIN
    assert throughput.cpu_model()


def test_a_result_names_the_commit_and_whether_the_code_differed_from_it(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    for name in ("deep_sarsa/algorithm.py", "benchmarks/harness.py", "benchmarks/results/table.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = git("rev-parse", "--short", "HEAD")
    benchmarks = tmp_path / "benchmarks"
    assert harness._commit(benchmarks) == head
    (tmp_path / "benchmarks/results/table.md").write_text("new numbers\n")  # results are not code
    (tmp_path / "deep_sarsa/untracked.py").write_text("y = 2\n")  # nor is an untracked file
    assert harness._commit(benchmarks) == head
    for name in ("deep_sarsa/algorithm.py", "benchmarks/harness.py"):
        (tmp_path / name).write_text("x = 2\n")
        assert harness._commit(benchmarks) == f"{head}+changes", name
        git("checkout", "-q", "--", name)
    assert harness._commit(tmp_path.parent / "no-such-folder") == "unknown"


@pytest.mark.parametrize(("algorithm", "tau"), [("sarsa-sampled-averagepick", 0.005), ("sarsa-sampled-slowpick", 1e-4)])
def test_pick_by_average_moves_its_picker_toward_the_online_network_by_tau_per_gradient_step(
    algorithm: str, tau: float
) -> None:
    # #31's lagging pickers: after k gradient steps the picker is (1 - τ)^k of itself and the rest the online network
    kind, keywords = harness.DIAGNOSIS[algorithm]
    model = kind("MlpPolicy", "CartPole-v1", learning_starts=0, buffer_size=100, batch_size=16, seed=0, **keywords)
    assert isinstance(model, harness.PickByAverage)
    model.learn(40)
    with th.no_grad():
        for parameter in model.q_net.parameters():
            parameter.add_(th.randn_like(parameter))  # the online network far from the picker, so that τ shows
    before = [parameter.detach().clone() for parameter in model.q_net_average.parameters()]
    model.train(gradient_steps=7, batch_size=16)
    kept = (1 - tau) ** 7
    for old, online, average in zip(before, model.q_net.parameters(), model.q_net_average.parameters(), strict=True):
        assert th.allclose(average, kept * old + (1 - kept) * online.detach(), atol=1e-7)
    assert any(not th.equal(old, online) for old, online in zip(before, model.q_net.parameters(), strict=True))
    samples, _ = model._sample(16)
    with th.no_grad():  # what picks a'
        picker = model._policy_q_values(samples, th.zeros(16, 2))
        assert th.equal(picker, model.q_net_average(samples.next_observations))


def test_curves_counts_each_seeds_end(tmp_path: Path) -> None:
    ends = {0: [100, 500, 500, 500, 500, 500], 1: [100, 500, 500, 100, 500, 100], 2: [100, 100, 100, 100, 100, 480]}
    for (seed, returns), algorithm in itertools.product(ends.items(), ("dqn", "sarsa-sampled")):
        returns = returns if algorithm == "dqn" else [300] * len(returns)  # DeepSARSA: 300 at every evaluation
        curve = [[5000 * (i + 1), float(value), 0.0] for i, value in enumerate(returns)]
        result = dict(task="CartPole-v1", algorithm=algorithm, seed=seed, curve=curve)
        path = harness.job_path(tmp_path, "CartPole-v1", algorithm, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    output = tmp_path / "diagnosis.md"
    command = [
        "curves",
        "--algorithms",
        "dqn",
        "sarsa-sampled",
        "--last",
        "5",
        "--runs",
        str(tmp_path),
        "--output",
        str(output),
    ]
    assert harness.main(command) == 0
    # finals 500, 100, 480: 2 of 3 at 475 or more; the last 5: 5 + 3 + 1 = 9 of 15, mean (2500 + 1700 + 880) / 15;
    # seed 1 fell after reaching it. Seed means 500, 340 and 176: a resample of 3 seeds is all one seed with
    # probability 1/27 > 2.5%, so the bootstrap's 95% interval runs from the lowest seed mean to the highest
    assert "| dqn | 3 | 480.0 [290.0, 490.0] | 2/3 | 9/15 | 339 [176, 500] | — | 1/3 |" in output.read_text()
    assert "| 2 | 100 | 100 | 100 | 100 | 100 | 480 |" in output.read_text()
    # DeepSARSA's mean is always 300, so its difference from DQN's runs over 300 - 500 to 300 - 176 (as above)
    assert "| sarsa-sampled | 3 | 300.0 [300.0, 300.0] | 0/3 | 0/15 | 300 [300, 300] | -39 [-200.0, 124.0] | 0/3 |" in (
        output.read_text()
    )
    assert f"--runs {tmp_path} --output {output}`" in output.read_text()  # the command names the runs it read


def test_the_drop_in_table_checks_the_default_against_dqn(tmp_path: Path) -> None:
    finals = {
        ("CartPole-v1", "dqn"): [100.0, 300.0, 400.0, 500.0, 500.0],
        ("CartPole-v1", "sarsa-sampled"): [200.0, 480.0, 500.0, 500.0, 500.0],
        ("Acrobot-v1", "dqn"): [-80.0, -80.0, -80.0],
        ("Acrobot-v1", "sarsa-sampled"): [-100.0, -90.0, -70.0],
    }
    for (task, algorithm), values in finals.items():
        for seed, final in enumerate(values):
            result = dict(task=task, algorithm=algorithm, seed=seed, curve=[[5000, 9.0, 0.0], [10000, final, 0.0]])
            result |= dict(train_seconds=1.0, steps_per_second=1.0, machine="m", commit="abc1234", cpu="a CPU")
            path = harness.job_path(tmp_path, task, algorithm, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
    output = tmp_path / "learning.md"
    assert harness.main(["report", "--runs", str(tmp_path), "--output", str(output)]) == 0
    text = output.read_text()
    # quartiles (numpy's linear): DQN 400 [300, 500], width 200; DeepSARSA 500 [480, 500], width 20
    row = "| CartPole-v1 | 5/5 | 400.0 [300.0, 500.0] | 500.0 [480.0, 500.0] | yes (500.0 vs 400.0; ["
    assert row in text and "| yes (20.0 vs 200.0; [" in text and text.count(" abc1234; a CPU |") == 2
    assert "seeds ≥ 475 at the last evaluation: DeepSARSA 4/5, DQN 2/5." in text
    # a table for each default that has runs: here only the one before 0.3.0
    assert "Drop-in (#31, docs/diagnosis.md): the default before 0.3.0, `sarsa-sampled`, against DQN" in text
    assert "`sarsa-expected-targetpick`, against DQN" not in text
    # Acrobot: DQN -80 [-80, -80]; DeepSARSA -90 [-95, -80]: both bars missed. The bootstrap: DQN's median and IQR
    # are always -80 and 0. A resample of DeepSARSA's 3 seeds has median -100 or -70 with probability 7/27 each (2 or
    # 3 draws of it), so the median's difference runs over [-20, 10]. Its IQR is half the range of the 3 draws: 0 when
    # all 3 are the same (3/27), 15 when they hold both -100 and -70 (12/27), so the IQR's difference runs over [0, 15]
    verdict = "no (-90.0 vs -80.0; [-20.0, 10.0]) | no (15.0 vs 0.0; [0.0, 15.0])"
    assert f"| Acrobot-v1 | 3/3 | -80.0 [-80.0, -80.0] | -90.0 [-95.0, -80.0] | {verdict} |" in text


def test_pick_with_memory_epsilon_draws_a_prime_with_the_memorys_mean_epsilon(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, float]] = []
    train = DeepSARSA.train

    def spy(model: DeepSARSA, gradient_steps: int, batch_size: int = 100) -> None:
        seen.append((model.num_timesteps, model.exploration_rate))
        train(model, gradient_steps, batch_size)

    monkeypatch.setattr(DeepSARSA, "train", spy)
    keywords: dict = dict(learning_starts=100, exploration_fraction=0.5, exploration_final_eps=0.1, train_freq=500)
    model = harness.PickWithMemoryEpsilon("MlpPolicy", "CartPole-v1", buffer_size=1000, gradient_steps=1, **keywords)
    model.learn(4000)
    # ε(s) = 1 - 0.9 s / 2000 up to step 2000, then 0.1; the memory holds steps t - 1000 .. t - 1 (0 .. t - 1 early)
    epsilon = {t: 1 - 0.9 * ((max(0, t - 1000) + t - 1) / 2) / 2000 for t in (500, 1000, 1500)} | {3000: 0.1, 3500: 0.1}
    assert set(epsilon) <= {step for step, _ in seen}
    for step, rate in seen:
        if step in epsilon:
            assert rate == pytest.approx(epsilon[step], abs=1e-9), step
    assert model.exploration_rate == pytest.approx(0.1)  # the acting ε is back after each train


def test_half_stored_keeps_the_stored_a_prime_on_about_half_of_the_rows() -> None:
    model = harness.HalfStored("MlpPolicy", "CartPole-v1", next_action="stored", learning_starts=0, buffer_size=500, seed=0)
    model.learn(400)
    state = np.random.get_state()
    _, stored = DeepSARSA._sample(model, 4000)  # the same rows, every stored a'
    np.random.set_state(state)
    _, half = model._sample(4000)
    assert stored.stored_actions is not None and half.stored_actions is not None and not half.all_stored
    kept = half.stored_actions >= 0
    assert th.equal(half.stored_actions[kept], stored.stored_actions[kept])  # where kept, the row's stored a'
    assert abs(kept.float().mean().item() - 0.5) < 4 * (0.25 / 4000) ** 0.5  # binomial(4000, 1/2), 4 standard deviations


@pytest.mark.parametrize(
    ("buffer_size", "mean_epsilon"), [(10_000, (100 + 1900 * (1 - 0.9 * 1049.5 / 2000) + 2000 * 0.1) / 4000), (1000, 0.1)]
)
def test_pick_with_row_epsilon_explores_with_the_epsilon_each_row_was_taken_with(
    buffer_size: int, mean_epsilon: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ε(step) = 1 before learning_starts = 100, then 1 - 0.9 step / 2000 up to step 2000, then 0.1. The memory holds
    # steps 0 .. 3999 (mean ε over them: 1 for 100 steps, 1 - 0.9 * 1049.5 / 2000 on average for 1900, 0.1 for 2000), or
    # only 3000 .. 3999 (all 0.1) when it holds 1000
    keywords: dict = dict(learning_starts=100, exploration_fraction=0.5, exploration_final_eps=0.1, train_freq=500)
    keywords |= dict(next_action="stored", next_action_net="online")  # as the grid trains it (harness.train_job)
    model = harness.PickWithRowEpsilon("MlpPolicy", "CartPole-v1", buffer_size=buffer_size, **keywords)
    model.learn(4000)
    samples, next_state = model._sample(20_000)
    assert next_state.stored_actions is not None
    explored = (next_state.stored_actions >= 0).float().mean().item()
    assert abs(explored - mean_epsilon) < 4 * (mean_epsilon * (1 - mean_epsilon) / 20_000) ** 0.5 + 0.01
    # elsewhere a' is the online network's greedy pick: train draws with ε = 0 there, then restores the acting ε
    drawn_with: list[float] = []

    def spy(q_values: th.Tensor, epsilon: float, masks: th.Tensor | None = None) -> th.Tensor:
        drawn_with.append(epsilon)
        return sample_epsilon_greedy(q_values, epsilon, masks)

    monkeypatch.setattr(deep_sarsa.deep_sarsa, "sample_epsilon_greedy", spy)
    model.train(gradient_steps=3, batch_size=8)
    assert drawn_with == [0.0, 0.0, 0.0] and model.exploration_rate == pytest.approx(0.1)
    model.exploration_rate = 0.0  # as in train
    with th.no_grad():
        target = model._td_target(samples, next_state)
        q_next = model.q_net_target(samples.next_observations)
        a_prime = th.where(
            next_state.stored_actions >= 0,
            next_state.stored_actions,
            model.q_net(samples.next_observations).argmax(1, keepdim=True),
        )
    expected = samples.rewards + (1 - samples.dones) * model.gamma * q_next.gather(1, a_prime)
    assert th.allclose(target, expected, atol=1e-5)
