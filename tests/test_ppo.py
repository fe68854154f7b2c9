"""Turn-level PPO on a tiny Llama: learning on a toy reward, episode bookkeeping, checkpoints, resume, no-signal."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rlheal.rollout
from rlheal.rollout import Decoding, Generation, PlayedEpisode, play
from rlheal.store import Store
from rlheal.tasks.base import CORRECT, UNPARSEABLE, WRONG_VALUE, Problem, Task, Verdict
from rlheal.train.ppo import (
    RL_UPDATES,
    PPOConfig,
    ResumeError,
    attempt_rows,
    episode_chunks,
    flatten_episodes,
    rl_checkpoints,
    score_steps,
    train_ppo,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


class DigitTask(Task):
    """"Say a digit.": "7" earns +5, another digit +1, anything else 0 (a format error); 2 attempts."""

    name = "digit"
    default_max_attempts = 2

    def draw(self, rng, split: str) -> dict:
        return {"tag": rng.randrange(10**9)}

    def holdout_key(self, data: dict) -> str:
        return f"digit:{data['tag']}"

    def prompt(self, problem: Problem) -> str:
        return "Say a digit."

    def answer(self, problem: Problem) -> str:
        return "7"

    def verify(self, problem: Problem, text: str) -> Verdict:
        if text.startswith("7"):
            return Verdict(True, 5.0, CORRECT, "", format_ok=True)
        if text[:1].isdigit():
            return Verdict(False, 1.0, WRONG_VALUE, "that digit is not the one", format_ok=True)
        return Verdict(False, 0.0, UNPARSEABLE, "no digit was found", format_ok=False)


class NeverParsesTask(DigitTask):
    """Every answer is a format error with the same reward: no learning signal."""

    def verify(self, problem: Problem, text: str) -> Verdict:
        return Verdict(False, -3.0, UNPARSEABLE, "no answer was found", format_ok=False)


def first_token_prob(folder, chars: str) -> float:
    """Probability that the model's first answer character is one of `chars` (temperature 1)."""
    from rlheal.models.checkpoint import load_model

    model, tokenizer = load_model(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say a digit."}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    return float(sum(probs[tokenizer.convert_tokens_to_ids(c)] for c in chars))


def train_on_digits(train, start, out, config, store_folder):
    """Train `train` (train_ppo or train_grpo) on the digit task from `start` into `out`, storing in
    `store_folder`; (the result, the stored rl_updates rows)."""
    with Store(store_folder) as store:
        result = train(start, out, config, store=store, task=DigitTask(), show_progress=False)
        return result, store.rows(RL_UPDATES)


TOY = dict(task="digit", value_warmup=0, episodes_per_update=32, max_attempts=2, max_new_tokens=3, temperature=1.0, lr=1e-2,
           minibatch_size=16, epochs=4, seed=0)


def test_config_rejects_invalid_values_naming_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gamma"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValidationError, match="clip"):
        PPOConfig(clip=0)
    with pytest.raises(ValidationError, match="episodes_per_update"):
        PPOConfig(episodes_per_update=0)
    with pytest.raises(ValidationError, match="kl_coef, kl_target and kl_stop need track_kl"):
        PPOConfig(kl_coef=0.1, track_kl=False)
    with pytest.raises(ValidationError, match="extra"):
        PPOConfig(gama=0.9)
    with pytest.raises(ValidationError, match="unknown option.*valid: target, id_max_rank"):
        PPOConfig(task_options={"id_max": 9})


def test_task_options_shape_the_rl_problems_and_are_recorded(tmp_path, make_tiny_checkpoint, monkeypatch):
    config = PPOConfig(task="gp24", task_options={"id_max_rank": 9}, updates=1, episodes_per_update=4,
                       max_attempts=1, max_new_tokens=4, minibatch_size=4, epochs=1)
    assert "task_options" not in PPOConfig().model_dump() and config.model_dump()["task_options"] == {"id_max_rank": 9}
    played = []

    def spy(task, problems, *args, **kwargs):
        played.extend(problems)
        return play(task, problems, *args, **kwargs)

    monkeypatch.setattr(rlheal.rollout, "play", spy)
    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    result = train_ppo(start, tmp_path / "rl", config, show_progress=False)
    assert len(played) == 4 and all(max(p.data["values"]) <= 9 for p in played)
    manifest = json.loads((result.checkpoints[-1] / "rlheal_manifest.json").read_text())
    assert manifest["extra"]["config"]["task_options"] == {"id_max_rank": 9}


def test_flatten_episodes_marks_each_episode_end(echo_task):
    played = []
    for index, texts in enumerate([["x", "1"], ["2", "3", "4"]]):
        episode = echo_task.new_episode(echo_task.problem("id", 0, index), max_attempts=3)
        pe = PlayedEpisode(episode)
        for text in texts:
            echo_task.step(episode, text)
            pe.generations.append(Generation(text, prompt_ids=[1, 2], completion_ids=[3]))
        played.append(pe)
    steps = flatten_episodes(played)
    assert steps.dones == [False, True, False, False, True]
    assert steps.rewards == [-3.0, -1.0, -1.0, -1.0, -1.0]
    assert steps.format_ok == [False, True, True, True, True]
    assert (steps.n_episodes, steps.n_solved) == (2, 0)


def test_attempts_share_a_row_while_each_chat_begins_with_the_last():
    attempts = [Generation("a", [1, 2], [3, 4]), Generation("b", [1, 2, 3, 4, 5], [6]),
                Generation("c", [1, 2, 9], [7]), Generation("d", [1, 2, 9, 7, 8], [2])]
    rows, row_of = attempt_rows(attempts)
    assert rows == [[1, 2, 3, 4, 5, 6], [1, 2, 9, 7, 8, 2]]  # attempt 3's chat was re-tokenised: a new row
    assert row_of == [0, 0, 1, 1]


def test_flattened_steps_point_into_their_rows(echo_task):
    played = []
    for index, texts in enumerate([["x", "1"], ["2"]]):
        episode = echo_task.new_episode(echo_task.problem("id", 0, index), max_attempts=2)
        pe = PlayedEpisode(episode)
        chat = [10 + index]
        for text in texts:
            echo_task.step(episode, text)
            pe.generations.append(Generation(text, prompt_ids=list(chat), completion_ids=[ord(text)]))
            chat += [ord(text), 0]
        played.append(pe)
    steps = flatten_episodes(played)
    assert steps.rows == [[10, ord("x"), 0, ord("1")], [11, ord("2")]]
    assert (steps.row, steps.prompt_lens, steps.completion_lens, steps.episode) == ([0, 0, 1], [1, 3, 1], [1, 1, 1],
                                                                                  [0, 0, 1])
    assert steps.of_episodes([1]) == [2] and episode_chunks(steps, 2) == [[0], [1]]
    assert episode_chunks(steps, 3) == [[0, 1]]


def test_flatten_episodes_needs_token_ids(echo_task):
    episode = echo_task.new_episode(echo_task.problem("id", 0, 0), max_attempts=1)
    echo_task.step(episode, "1")
    with pytest.raises(ValueError, match="no token ids"):
        flatten_episodes([PlayedEpisode(episode, [Generation("1")])])


@pytest.mark.slow
def test_one_pass_scoring_equals_scoring_each_attempt_alone(tmp_path, make_tiny_checkpoint, echo_task):
    """Fixed episodes of three attempts: one forward pass over each episode's final chat gives the log-probs,
    values and advantages that a separate pass over each attempt's own prompt and completion gives."""
    from rlheal.engine import EngineBackend
    from rlheal.models.checkpoint import load_model
    from rlheal.train.ppo import _actor_critic_class
    from rlheal.train.rl_math import turn_gae
    from rlheal.train.value_head import ValueHead

    model, tokenizer = load_model(make_tiny_checkpoint(tmp_path / "c", seed=3))
    played = play(echo_task, echo_task.problems("ood", 0, 5), EngineBackend(model, tokenizer, batch_size=2),
                  decoding=Decoding(temperature=1.0, max_new_tokens=6, seed=1))
    steps = flatten_episodes(played)
    assert len(steps.rows) < len(steps)  # attempts share rows (a sampled special token, dropped from the text, splits one)
    torch.manual_seed(0)
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.mlp[-1].weight)  # values that differ from position to position
    actor_critic = _actor_critic_class()(model, head).eval()
    temperature = 0.7
    with torch.no_grad():
        logp, values, *_ = score_steps(actor_critic, steps, list(range(len(steps))), 0, temperature, "cpu")
        alone_logp, alone_values = [], []
        for pe in played:
            for g in pe.generations:
                ids = torch.tensor([g.prompt_ids + g.completion_ids])
                out = model(input_ids=ids, output_hidden_states=True)
                log_probs = torch.log_softmax(out.logits[0].float() / temperature, -1)
                n = len(g.prompt_ids)
                alone_logp.append(sum(float(log_probs[n - 1 + i, t]) for i, t in enumerate(g.completion_ids)))
                alone_values.append(float(head(out.hidden_states[-1][0, n - 1])))
    torch.testing.assert_close(logp, torch.tensor(alone_logp), atol=1e-5, rtol=0)
    torch.testing.assert_close(values, torch.tensor(alone_values), atol=1e-5, rtol=0)
    rewards, dones = torch.tensor(steps.rewards), torch.tensor(steps.dones)
    ours = turn_gae(rewards, values, dones, 0.9, 0.95)[0]
    theirs = turn_gae(rewards, torch.tensor(alone_values), dones, 0.9, 0.95)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_ppo_raises_the_reward_of_the_favoured_answers(tmp_path, make_tiny_checkpoint):
    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    digits_before = first_token_prob(start, "0123456789")
    result, rows = train_on_digits(train_ppo, start, tmp_path / "rl", PPOConfig(**TOY, updates=4, save_every=2),
                                   tmp_path)
    assert [r["update"] for r in rows] == list(range(1, 5))
    assert not any(r["no_signal"] for r in rows)
    digits_after = first_token_prob(result.checkpoints[-1], "0123456789")
    assert digits_after > digits_before + 0.3
    first, last = rows[0], rows[-1]
    assert last["mean_reward"] > first["mean_reward"]
    for row in rows:  # every logged number is finite, the histogram counts every step
        for key in ("mean_reward", "success_rate", "kl", "value_loss", "policy_loss", "clip_frac", "entropy",
                    "adv_mean", "adv_std", "adv_skew"):
            assert math.isfinite(row[key]), key
        assert sum(row["adv_hist"]["counts"]) == row["n_steps"]
        assert row["n_episodes"] == 32 and 32 <= row["n_steps"] <= 64
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout's policy is the start
    assert rows[-1]["kl"] > 0


@pytest.mark.slow
def test_checkpoints_load_evaluate_and_resume(tmp_path, make_tiny_checkpoint):
    from rlheal.evaluate import EVALS, evaluate
    from rlheal.models.checkpoint import load_model, read_manifest
    from rlheal.train.value_head import VALUE_HEAD_FILE

    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    out = tmp_path / "rl"
    config = PPOConfig(**{**TOY, "episodes_per_update": 8}, updates=2, save_every=1)
    result = train_ppo(start, out, config, task=DigitTask(), show_progress=False)
    assert [p.name for p in result.checkpoints] == ["step-000001", "step-000002"]
    manifest = read_manifest(result.checkpoints[-1])
    assert (manifest.stage, manifest.step, manifest.parent) == ("rl", 2, str(start.resolve()))
    assert manifest.extra["algo"] == "ppo" and (result.checkpoints[-1] / VALUE_HEAD_FILE).exists()
    load_model(result.checkpoints[-1])  # plain transformers folder

    with Store(tmp_path) as store:
        rows = evaluate(store, result.checkpoints, [DigitTask()], episodes=4, show_progress=False,
                        decoding=Decoding(max_new_tokens=3))
        assert {r["stage"] for r in rows} == {"rl"} and len(store.rows(EVALS)) == 4

    again = train_ppo(start, out, config, task=DigitTask(), show_progress=False)
    assert again.rows == []  # already done
    more = train_ppo(start, out, config.model_copy(update={"updates": 3}), task=DigitTask(), show_progress=False)
    assert [r["update"] for r in more.rows] == [3]
    with pytest.raises(ResumeError, match=r"other settings \(lr: 0.01 there, 0.02 now\).*another output folder"):
        train_ppo(start, out, PPOConfig(**{**TOY, "episodes_per_update": 8, "lr": 2e-2}, updates=4),
                  task=DigitTask(), show_progress=False)
    assert len(rl_checkpoints(out)) == 3  # nothing was trained or lost


@pytest.mark.slow
def test_no_learning_signal_is_reported_not_trained(tmp_path, make_tiny_checkpoint):
    from safetensors.torch import load_file

    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    result = train_ppo(start, tmp_path / "rl", PPOConfig(**{**TOY, "episodes_per_update": 8}, updates=2),
                       task=NeverParsesTask(), show_progress=False)
    assert result.no_signal
    row = result.rows[-1]
    assert row["no_signal"] and row["format_rate"] == 0.0 and row["mean_reward"] == -3.0
    assert row["policy_loss"] is None and row["clip_frac"] is None and row["explained_variance"] is None
    assert math.isfinite(row["adv_mean"]) and math.isfinite(row["adv_skew"])
    before, after = load_file(start / "model.safetensors"), load_file(result.checkpoints[-1] / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # no optimiser step was taken


def test_sweep_rejects_unknown_algorithms_and_missing_starts(tmp_path, make_tiny_checkpoint):
    from pydantic import ValidationError

    from rlheal.train.sweep import SweepError, make_config, select_starts

    with pytest.raises(SweepError, match="unknown RL algorithm 'dpo'; valid: ppo, grpo"):
        make_config("dpo")
    with pytest.raises(ValidationError, match="lam"):
        make_config("ppo", {"lam": -1})
    make_tiny_checkpoint(tmp_path / "sft" / "step-000040", step=40)
    make_tiny_checkpoint(tmp_path / "sft" / "step-000080", step=80)
    assert [p.name for p in select_starts(tmp_path / "sft", [80])] == ["step-000080"]
    with pytest.raises(SweepError, match="no checkpoint of step 60 .* available steps: 40, 80"):
        select_starts(tmp_path / "sft", [40, 60])


@pytest.mark.slow
def test_sweep_trains_evaluates_and_resumes_each_start(tmp_path, make_tiny_checkpoint):
    from rlheal.train.sweep import rl_folder, run_sweep

    starts = [make_tiny_checkpoint(tmp_path / "sft" / f"step-{s:06d}", step=s, seed=s) for s in (40, 80)]
    options = dict(algo="ppo", overrides={**TOY, "episodes_per_update": 4, "max_attempts": 1, "updates": 1},
                   eval_episodes=2, eval_decoding=Decoding(max_new_tokens=3), task=DigitTask(),
                   show_progress=False)
    summary = run_sweep(tmp_path / "sft", tmp_path, steps=[40], **options)
    assert [(r["start_step"], r["arm"], r["rl_step"]) for r in summary] == [(40, "ppo", 1)]
    assert all(r[k] is not None for r in summary for k in ("id_before", "id_after", "ood_before", "ood_after"))
    done = rl_folder(tmp_path, starts[0], "ppo") / "step-000001"
    stamp = done.stat().st_mtime_ns
    summary = run_sweep(tmp_path / "sft", tmp_path, steps=[40, 80], **options)  # 40 is done: only 80 runs
    assert [r["start_step"] for r in summary] == [40, 80]
    assert done.stat().st_mtime_ns == stamp
    assert rl_folder(tmp_path, starts[1], "ppo").name == "sft-80-ppo"


@pytest.mark.slow
def test_sweep_evaluates_with_its_own_attempt_limit_when_given(tmp_path, make_tiny_checkpoint):
    from rlheal.evaluate import EVALS
    from rlheal.train.sweep import run_sweep

    make_tiny_checkpoint(tmp_path / "sft" / "step-000040", step=40, seed=40)
    run_sweep(tmp_path / "sft", tmp_path, steps=[40], algo="ppo",
              overrides={**TOY, "episodes_per_update": 4, "max_attempts": 2, "updates": 1}, eval_episodes=2,
              eval_decoding=Decoding(max_new_tokens=3), eval_max_attempts=1, task=DigitTask(), show_progress=False)
    with Store(tmp_path) as store:
        rows = store.rows(EVALS)
    assert rows and {r["eval_set"].split("-")[3] for r in rows} == {"a1"}  # the study's limit, not RL's 2
    assert all(r["mean_attempts"] == 1 for r in rows)


def test_no_signal_advice_tells_solved_starts_from_unparsed_ones():
    from rlheal.train.ppo import no_signal_advice

    assert "solved at the first attempt" in no_signal_advice({"success_rate": 1.0, "format_rate": 1.0})
    unparsed = no_signal_advice({"success_rate": 0.0, "format_rate": 0.0})
    assert "parse in 0% of attempts" in unparsed and "train SFT longer" in unparsed


def test_rlheal_rl_prints_every_setting_it_trains_with_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from rlheal.cli import app

    result = CliRunner().invoke(app, ["rl", "--from", str(tmp_path / "missing"), "--set", "lr=3e-5",
                                      "--set", "episodes_per_update=16"])
    assert result.exit_code != 0 and "missing" in result.output  # no SFT folder: nothing trained
    shown = dict(part.split("=", 1) for part in result.output.split("ppo settings: ")[1].splitlines()[0].split())
    expected = PPOConfig(lr=3e-5, episodes_per_update=16).model_dump()
    assert shown.keys() == expected.keys()
    assert {k: shown[k] for k in ("lr", "episodes_per_update", "temperature", "kl_coef")} == {
        "lr": "3e-05", "episodes_per_update": "16", "temperature": "0.2", "kl_coef": "0.0"}


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_value_warmup_trains_the_critic_alone_then_the_policy(tmp_path, make_tiny_checkpoint):
    from rlheal.train.value_head import VALUE_HEAD_FILE

    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    config = PPOConfig(**{**TOY, "episodes_per_update": 8, "value_warmup": 2, "value_lr": 1e-2}, updates=3,
                       save_every=1)
    result = train_ppo(start, tmp_path / "rl", config, task=DigitTask(), show_progress=False)
    first, second, third = result.checkpoints
    before = _weights(start)
    for warm in (first, second):  # the model does not move while the critic warms up ...
        assert all(torch.equal(before[k], v) for k, v in _weights(warm).items())
    assert (first / VALUE_HEAD_FILE).read_bytes() != (second / VALUE_HEAD_FILE).read_bytes()  # ... the critic does
    assert any(not torch.equal(before[k], v) for k, v in _weights(third).items())  # then the policy trains
    rows = result.rows
    assert all(math.isfinite(r["explained_variance"]) for r in rows)
    assert rows[0]["explained_variance"] == pytest.approx(0.0, abs=1e-12)  # a zero-initialised head predicts 0s


@pytest.mark.slow
def test_the_control_arm_trains_on_shuffled_rewards(tmp_path, make_tiny_checkpoint):
    from rlheal.models.checkpoint import read_manifest

    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    digits_before = first_token_prob(start, "0123456789")
    real, _ = train_on_digits(train_ppo, start, tmp_path / "rl", PPOConfig(**TOY, updates=4, save_every=4), tmp_path)
    control, rows = train_on_digits(train_ppo, start, tmp_path / "control",
                                    PPOConfig(**TOY, updates=4, save_every=4, control=True), tmp_path)
    assert {r["algo"] for r in rows} == {"ppo", "ppo-control"}
    assert read_manifest(control.checkpoints[-1]).label == "sft-0+ppo-control-4"
    # the control arm logs the true rewards of its rollouts, but learns from rewards no longer tied to answers
    gain_real = first_token_prob(real.checkpoints[-1], "0123456789") - digits_before
    gain_control = first_token_prob(control.checkpoints[-1], "0123456789") - digits_before
    assert gain_real > 0.3 and gain_control < gain_real / 3


@pytest.mark.slow
def test_adaptive_kl_and_the_kl_stop(tmp_path, make_tiny_checkpoint):
    from rlheal.models.checkpoint import read_manifest
    from rlheal.train.rl_math import adaptive_kl_coef

    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    config = PPOConfig(**TOY, updates=3, save_every=1, kl_coef=0.1, kl_target=1e-6, kl_horizon=100)
    result = train_ppo(start, tmp_path / "rl", config, task=DigitTask(), show_progress=False)
    coefs = [r["kl_coef"] for r in result.rows]
    for before, after, row in zip(coefs, coefs[1:], result.rows, strict=False):  # each update's KL moves the next
        assert after == pytest.approx(adaptive_kl_coef(before, row["kl"], 1e-6, 100, row["n_steps"]))
    # update 1 plays the start itself (KL 0, below the target: the penalty shrinks); later updates are far
    # above the tiny target: it grows
    assert coefs[0] == 0.1 and coefs[1] < coefs[0] and coefs[2] > coefs[1]
    assert read_manifest(result.checkpoints[-1]).extra["kl_coef"] == pytest.approx(
        adaptive_kl_coef(coefs[-1], result.rows[-1]["kl"], 1e-6, 100, result.rows[-1]["n_steps"]))

    stopping = PPOConfig(**TOY, updates=5, save_every=5, kl_stop=1e-9)
    stopped = train_ppo(start, tmp_path / "stop", stopping, task=DigitTask(), show_progress=False)
    assert [r["update"] for r in stopped.rows] == [1, 2]  # update 1 starts at the start (KL 0), update 2 passes
    assert [p.name for p in stopped.checkpoints] == ["step-000002"]
    assert read_manifest(stopped.checkpoints[0]).extra["kl_stopped"] is True
    again = train_ppo(start, tmp_path / "stop", stopping, task=DigitTask(), show_progress=False)
    assert again.rows == []  # a stopped run stays stopped
