import pytest

from rlheal.rollout import (
    Decoding,
    Generation,
    HFBackend,
    RolloutError,
    ScriptedBackend,
    _cut_at_eos,
    oracle_backend,
    play,
    round_seed,
)


class RecordingBackend:
    """Answers attempt number a (1-based) of a chat with script(prompt, a); records every call."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, batch, *, max_new_tokens, temperature, seed, top_p=1.0):
        self.calls.append({"size": len(batch), "seed": seed, "max_new_tokens": max_new_tokens})
        out = []
        for messages in batch:
            attempt = 1 + sum(m["role"] == "assistant" for m in messages)
            out.append(Generation(self.script(messages[0]["content"], attempt)))
        return out

    def fits(self, batch, *, max_new_tokens):
        return [True] * len(batch)


def number_of(prompt: str) -> str:
    return prompt.removeprefix("Repeat the number ").removesuffix(".")


def test_oracle_solves_every_episode_at_the_first_attempt(echo_task):
    problems = echo_task.problems("id", 3, 12)
    played = play(echo_task, problems, oracle_backend(echo_task, problems))
    assert [pe.episode.problem for pe in played] == problems
    for pe in played:
        assert pe.episode.solved and pe.episode.n_attempts == 1
        assert [t.role for t in pe.episode.turns] == ["user", "assistant"]
        assert pe.rewards == [5.0]
        assert len(pe.generations) == 1


def test_wrong_answers_use_every_attempt_with_feedback_turns(echo_task):
    problems = echo_task.problems("ood", 0, 5)
    backend = RecordingBackend(lambda prompt, attempt: "0")
    played = play(echo_task, problems, backend, max_attempts=4)
    assert [c["size"] for c in backend.calls] == [5, 5, 5, 5]
    for pe in played:
        ep = pe.episode
        assert not ep.solved and ep.n_attempts == 4
        assert [t.role for t in ep.turns] == ["user", "assistant"] * 4
        assert ep.turns[2].content == echo_task.feedback_turn(ep.verdicts[0])
        assert pe.rewards == [-1.0] * 4


def test_each_round_batches_only_the_unfinished_episodes(echo_task):
    # Episode i is solved at attempt (i % 3) + 1; with 7 episodes: 3 solve at 1, 2 at 2, 2 at 3.
    problems = echo_task.problems("id", 0, 7)
    index_of = {echo_task.prompt(p): p.index for p in problems}

    def script(prompt, attempt):
        return number_of(prompt) if attempt == index_of[prompt] % 3 + 1 else "nope"

    backend = RecordingBackend(script)
    played = play(echo_task, problems, backend)
    assert [c["size"] for c in backend.calls] == [7, 4, 2]
    assert [pe.episode.n_attempts for pe in played] == [i % 3 + 1 for i in range(7)]
    assert all(pe.episode.solved for pe in played)
    assert played[2].rewards == [-3.0, -3.0, 5.0]
    assert [v.format_ok for v in played[2].episode.verdicts] == [False, False, True]


def test_rounds_get_distinct_seeds_fixed_by_the_decoding_seed(echo_task):
    problems = echo_task.problems("id", 0, 3)
    seeds = []
    for seed in (0, 0, 1):
        backend = RecordingBackend(lambda prompt, attempt: "x")
        play(echo_task, problems, backend, decoding=Decoding(seed=seed, max_new_tokens=7))
        seeds.append([c["seed"] for c in backend.calls])
        assert all(c["max_new_tokens"] == 7 for c in backend.calls)
    assert seeds[0] == seeds[1] == [round_seed(0, r) for r in range(3)]
    assert len(set(seeds[0])) == 3
    assert not set(seeds[0]) & set(seeds[2])


def test_progress_callback_counts_finished_episodes(echo_task):
    problems = echo_task.problems("id", 0, 4)
    seen = []
    play(echo_task, problems, ScriptedBackend(lambda m: "x"), max_attempts=2, on_round=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 4), (4, 4)]


def test_episodes_that_outgrow_the_context_are_stopped_not_failed(echo_task):
    problems = echo_task.problems("id", 0, 3)
    index_of = {echo_task.prompt(p): p.index for p in problems}
    first_answer = {p.index: "x" * (1 + 20 * p.index) for p in problems}  # a format error of growing length
    feedback = echo_task.feedback_turn(echo_task.verify(problems[0], "x"))
    chars_after_one = [len(echo_task.prompt(p)) + len(first_answer[p.index]) + len(feedback) for p in problems]
    room = chars_after_one[1] + 5  # with max_new_tokens=5, episodes 0 and 1 still fit, episode 2 does not
    assert chars_after_one[2] + 5 > room

    class Cramped(RecordingBackend):
        def fits(self, batch, *, max_new_tokens):
            return [sum(len(m["content"]) for m in chat) + max_new_tokens <= room for chat in batch]

    backend = Cramped(lambda prompt, attempt: first_answer[index_of[prompt]] if attempt == 1 else number_of(prompt))
    played = play(echo_task, problems, backend, decoding=Decoding(max_new_tokens=5))
    assert [c["size"] for c in backend.calls] == [3, 2]
    assert [pe.stopped for pe in played] == [None, None, "context"]
    assert [pe.episode.solved for pe in played] == [True, True, False]
    assert played[2].done and not played[2].episode.done and played[2].episode.n_attempts == 1


def test_a_backend_that_drops_completions_is_an_error(echo_task):
    class Short:
        def generate(self, batch, **kwargs):
            return [Generation("1")] * (len(batch) - 1)

        def fits(self, batch, **kwargs):
            return [True] * len(batch)

    with pytest.raises(RolloutError, match="2 completions for 3 chats"):
        play(echo_task, echo_task.problems("id", 0, 3), Short())


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0)]
)
def test_invalid_decoding_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Decoding(**{field: value})


def test_decoding_tag():
    assert Decoding().tag() == "greedy-m256"
    assert Decoding(temperature=0.7, top_p=0.95, max_new_tokens=64, seed=3).tag() == "t0.7-p0.95-m64-s3"


@pytest.mark.parametrize(
    ("ids", "eos", "expected"),
    [([5, 6, 2, 0, 0], [2], [5, 6, 2]), ([5, 6, 7], [2], [5, 6, 7]), ([9, 3, 2], [3, 2], [9, 3]), ([], [2], [])],
)
def test_cut_at_eos(ids, eos, expected):
    assert _cut_at_eos(ids, eos) == expected


# --- the Hugging Face backend on a tiny random Llama -------------------------------------------------------

CHATS = [
    [{"role": "user", "content": "Repeat the number 7."}],
    [{"role": "user", "content": "Repeat the number 123456, please, right now."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "12"}, {"role": "user", "content": "Again"}],
    [{"role": "user", "content": "Repeat the number 88."}],
]


@pytest.mark.slow
def test_batched_greedy_equals_one_by_one(tiny_model):
    model, tokenizer = tiny_model
    batched = HFBackend(model, tokenizer, batch_size=3).generate(CHATS, max_new_tokens=12, temperature=0, seed=0)
    single = HFBackend(model, tokenizer, batch_size=1)
    alone = [single.generate([chat], max_new_tokens=12, temperature=0, seed=0)[0] for chat in CHATS]
    assert batched == alone
    for chat, gen in zip(CHATS, batched, strict=True):
        rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert gen.prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert gen.text == tokenizer.decode(gen.completion_ids, skip_special_tokens=True)
        assert 1 <= len(gen.completion_ids) <= 12
        assert tokenizer.eos_token_id not in gen.completion_ids[:-1]


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_and_dynamic_kv_caches_give_the_same_tokens(tiny_model, temperature):
    model, tokenizer = tiny_model
    draws = {cache: HFBackend(model, tokenizer, batch_size=3, cache=cache).generate(
        CHATS, max_new_tokens=12, temperature=temperature, seed=3) for cache in ("static", "dynamic")}
    assert draws["static"] == draws["dynamic"]
    assert HFBackend(model, tokenizer).cache == "static"  # the model is on the CPU


def test_an_unknown_cache_layout_is_a_clear_error(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(ValueError, match="cache must be one of auto, static, dynamic, got 'paged'"):
        HFBackend(model, tokenizer, cache="paged")


@pytest.mark.slow
def test_sampling_is_reproducible_by_seed_and_leaves_the_global_rng_alone(tiny_model):
    import torch

    model, tokenizer = tiny_model
    backend = HFBackend(model, tokenizer, batch_size=2)
    state = torch.random.get_rng_state()
    draws = [backend.generate(CHATS, max_new_tokens=16, temperature=1.0, seed=s, top_p=0.9) for s in (5, 5, 6)]
    assert torch.equal(state, torch.random.get_rng_state())
    assert draws[0] == draws[1]
    assert [g.completion_ids for g in draws[0]] != [g.completion_ids for g in draws[2]]


@pytest.mark.slow
def test_generation_stops_at_any_eos_id(tiny_checkpoint):
    import torch

    from rlheal.models.checkpoint import load_model

    model, tokenizer = load_model(tiny_checkpoint)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # all logits equal: greedy picks token 0 (<pad>)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 0]
    out = HFBackend(model, tokenizer).generate(CHATS[:2], max_new_tokens=8, temperature=0, seed=0)
    assert [g.completion_ids for g in out] == [[0], [0]]
    assert [g.text for g in out] == ["", ""]


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_a_clear_error(tmp_path, make_tiny_checkpoint):
    from rlheal.models.checkpoint import load_model

    model, tokenizer = load_model(make_tiny_checkpoint(tmp_path / "short", max_position_embeddings=50))
    backend = HFBackend(model, tokenizer, name="short-model")
    backend.generate(CHATS[:1], max_new_tokens=4, temperature=0, seed=0)  # 46 prompt tokens + 4 fit
    with pytest.raises(RolloutError, match=r"short-model has a context of 50 tokens.*max_new_tokens=8"):
        backend.generate(CHATS[:1], max_new_tokens=8, temperature=0, seed=0)


def test_a_tokenizer_without_chat_template_is_a_clear_error(tiny_tokenizer):
    from conftest import make_tiny_tokenizer

    class Model:
        pass

    with pytest.raises(RolloutError, match="tokenizer of ckpt-7 has no chat template"):
        HFBackend(Model(), make_tiny_tokenizer(chat_template=None), name="ckpt-7")
