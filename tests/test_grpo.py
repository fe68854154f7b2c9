"""GRPO through TRL with multi-attempt episodes: token layout of an episode, learning on a toy reward."""

from __future__ import annotations

import math

import pytest
from test_ppo import NeverParsesTask, first_token_prob, train_on_digits

from rlheal.rollout import Generation
from rlheal.train.grpo import GRPOConfig, episode_tokens, train_grpo
from rlheal.train.ppo import ResumeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


def test_episode_tokens_mask_the_feedback_turns():
    attempts = [Generation("a", [1, 2], [3, 4]), Generation("b", [1, 2, 3, 4, 9, 9], [5]),
                Generation("c", [1, 2, 3, 4, 9, 9, 5, 8], [6, 7])]
    prompt, completion, mask = episode_tokens(attempts)
    assert prompt == [1, 2]
    assert completion == [3, 4, 9, 9, 5, 8, 6, 7]
    assert mask == [1, 1, 0, 0, 1, 0, 1, 1]


def test_episode_tokens_follow_the_next_prompt_where_it_retokenizes_differently():
    # the second prompt re-tokenized the first answer [3, 4] as [34]: the sampled tokens are dropped there
    attempts = [Generation("a", [1, 2], [3, 4]), Generation("b", [1, 2, 34, 9], [5])]
    prompt, completion, mask = episode_tokens(attempts)
    assert (prompt, completion, mask) == ([1, 2], [34, 9, 5], [0, 0, 1])


def test_grpo_config_rejects_invalid_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="num_generations"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValidationError, match="loss_type"):
        GRPOConfig(loss_type="ppo")


TOY = dict(task="digit", prompts_per_update=4, num_generations=8, max_attempts=2, max_new_tokens=3,
           temperature=1.0, lr=2e-2, num_iterations=4, seed=0)


@pytest.mark.slow
def test_grpo_refuses_to_resume_checkpoints_of_other_settings(tmp_path, make_tiny_checkpoint):
    from rlheal.models.checkpoint import Manifest, write_manifest

    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    config = GRPOConfig(task="gp24", updates=2, save_every=1)
    done = tmp_path / "rl" / "step-000001"
    done.mkdir(parents=True)
    write_manifest(done, Manifest(stage="rl", step=1, parent=str(start), extra={"config": config.model_dump()}))
    hard = config.model_copy(update={"task_options": {"id_max_rank": 9}})
    with pytest.raises(ResumeError, match=r"task_options: None there, \{'id_max_rank': 9\} now"):
        train_grpo(start, tmp_path / "rl", hard, show_progress=False)
    finished = config.model_copy(update={"updates": 1})  # a longer or shorter run of the same settings is fine
    assert train_grpo(start, tmp_path / "rl", finished, show_progress=False).rows == []


@pytest.mark.slow
def test_grpo_raises_the_reward_of_the_favoured_answers(tmp_path, make_tiny_checkpoint):
    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    before = first_token_prob(start, "0123456789")
    result, rows = train_on_digits(train_grpo, start, tmp_path / "rl", GRPOConfig(**TOY, updates=8, save_every=4),
                                   tmp_path)
    assert [p.name for p in result.checkpoints] == ["step-000004", "step-000008"]
    assert [r["update"] for r in rows] == list(range(1, 9)) and {r["algo"] for r in rows} == {"grpo"}
    assert first_token_prob(result.checkpoints[-1], "0123456789") > before + 0.3
    for row in rows:
        assert row["n_episodes"] == 32 and sum(row["adv_hist"]["counts"]) == 32
        assert math.isfinite(row["adv_std"]) and math.isfinite(row["entropy"])


@pytest.mark.slow
def test_grpo_without_signal_reports_it(tmp_path, make_tiny_checkpoint):
    start = make_tiny_checkpoint(tmp_path / "sft-0", seed=1)
    result = train_grpo(start, tmp_path / "rl", GRPOConfig(**{**TOY, "prompts_per_update": 1}, updates=1),
                        task=NeverParsesTask(), show_progress=False)
    assert result.no_signal and result.rows[0]["format_rate"] == 0.0
