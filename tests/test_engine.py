"""The episode engine: slot bookkeeping, forward plans, sampling, and whole episodes against `HFBackend`."""

from __future__ import annotations

import pytest
import torch

from rlheal.engine import EngineBackend, model_backend
from rlheal.engine.kv import Chunk, SlotCache, attention_mask, plan_feed
from rlheal.engine.sampling import choose_tokens, row_keys, top_p_mask
from rlheal.engine.slots import Slot, common_prefix
from rlheal.rollout import Decoding, Generation, HFBackend, PlayedEpisode, RolloutError, play

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


# --- slots: what is cached and what is fed ------------------------------------------------------------------
def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([7], [8]) == 0


def test_a_slot_feeds_only_what_the_next_prompt_adds():
    slot = Slot()
    slot.begin(3, [10, 11, 12])
    assert (slot.episode, slot.attempt, slot.cached, slot.pending) == (3, 0, [], [10, 11, 12])
    slot.fed()
    for token in (20, 21, 2):  # the attempt: two tokens and an eos; the eos is sampled but never fed
        slot.sampled(token)
        if token != 2:
            slot.fed()
    assert slot.cached == [10, 11, 12, 20, 21] and slot.completion == [20, 21, 2] and slot.pending == [2]
    slot.next_attempt([10, 11, 12, 20, 21, 2, 30, 31])  # the chat with the eos and a feedback turn
    assert (slot.attempt, slot.cached, slot.pending, slot.completion) == (1, [10, 11, 12, 20, 21], [2, 30, 31], [])


def test_a_slot_cuts_back_where_the_next_prompt_was_tokenised_differently():
    slot = Slot()
    slot.begin(0, [1, 2])
    slot.fed()
    slot.sampled(0)  # a special token the decoded text drops
    slot.fed()
    slot.sampled(5)
    slot.next_attempt([1, 2, 5, 9])
    assert slot.cached == [1, 2] and slot.pending == [5, 9]
    slot.next_attempt([1, 2])  # a prompt wholly cached still feeds its last token, for the logits
    assert slot.cached == [1] and slot.pending == [2]


# --- forward plans and masks --------------------------------------------------------------------------------
def test_plan_feed_left_pads_and_writes_padding_to_the_scratch_column():
    feed = plan_feed([Chunk(2, 5, [7, 8, 9]), Chunk(0, 0, [4])], n_slots=4, capacity=16, pad_id=0, device="cpu",
                     width_step=4)
    assert feed.input_ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert feed.positions.tolist() == [[5, 6, 7], [0, 0, 0]]
    assert feed.columns.tolist() == [[5, 6, 7], [16, 16, 0]]
    assert feed.slots.tolist() == [2, 0] and feed.width == 8  # longest slot ends at column 8
    in_place = plan_feed([Chunk(0, 3, [5]), Chunk(1, 0, [])], n_slots=4, capacity=16, pad_id=0, device="cpu")
    assert in_place.slots is None and in_place.columns.tolist() == [[3], [16]] and in_place.width == 4
    with pytest.raises(ValueError, match="past the cache's capacity of 16"):
        plan_feed([Chunk(0, 15, [1, 2])], n_slots=1, capacity=16, pad_id=0, device="cpu")


def test_attention_mask_by_hand():
    feed = plan_feed([Chunk(0, 2, [7, 8]), Chunk(1, 0, [4])], n_slots=2, capacity=8, pad_id=0, device="cpu")
    mask = attention_mask(feed, None)
    assert mask.shape == (2, 1, 2, 4)
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]  # padding sees column 0 only
    additive = attention_mask(feed, torch.float32)
    assert additive[0, 0, 0].tolist()[:3] == [0.0, 0.0, 0.0] and additive[0, 0, 0, 3] == torch.finfo(torch.float32).min


@pytest.mark.slow
def test_chunks_fed_into_slots_give_the_logits_of_whole_sequences(tiny_model):
    model, tokenizer = tiny_model
    engine = EngineBackend(model, tokenizer, batch_size=3)
    cache = engine.slot_cache(3, 64)
    sequences = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    with torch.inference_mode():
        first = engine.forward([Chunk(0, 0, sequences[0][:4]), Chunk(2, 0, sequences[2][:1])], cache)
        engine.forward([Chunk(1, 0, sequences[1])], cache)
        last = engine.forward([Chunk(0, 4, sequences[0][4:]), Chunk(1, 2, []), Chunk(2, 1, sequences[2][1:])], cache)
        whole = [model(input_ids=torch.tensor([s])).logits[0, -1] for s in sequences]
        prefix = model(input_ids=torch.tensor([sequences[0][:4]])).logits[0, -1]
    torch.testing.assert_close(first[0], prefix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[0], whole[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[2], whole[2], atol=1e-5, rtol=1e-5)


def test_slot_cache_moves_slots_and_keeps_them_when_it_grows():
    cache = SlotCache(layers=1, slots=3, kv_heads=1, head_dim=2, capacity=4, dtype=torch.float32, device="cpu")
    cache.keys[0][2, 0, :4] = torch.arange(8.0).view(4, 2)
    cache.move([2], [0])
    assert torch.equal(cache.keys[0][0, 0, :4], torch.arange(8.0).view(4, 2))
    cache.reserve(8)
    assert cache.capacity == 8 and cache.keys[0].shape == (3, 1, 9, 2)
    assert torch.equal(cache.keys[0][0, 0, :4], torch.arange(8.0).view(4, 2))


# --- choosing tokens ------------------------------------------------------------------------------------------
def test_greedy_is_argmax_first_index_on_ties():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 5.0, 5.0]])
    assert choose_tokens(logits, temperature=0).tolist() == [1, 0]


def test_top_p_keeps_what_transformers_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    for top_p in (0.3, 0.7, 0.95):
        scores = torch.randn(16, 50, generator=generator) * 3
        expected = TopPLogitsWarper(top_p)(None, scores.clone()) != float("-inf")
        assert torch.equal(top_p_mask(scores, top_p), expected)


def test_sampling_draws_from_the_softmax_of_the_nucleus():
    n = 40_000
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    keys = row_keys(11, torch.arange(n), torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))
    drawn = torch.bincount(choose_tokens(logits.expand(n, -1), temperature=0.7, keys=keys), minlength=5) / n
    expected = torch.softmax(logits / 0.7, -1)
    assert torch.allclose(drawn, expected, atol=4 * (expected * (1 - expected) / n).sqrt().max())
    nucleus = choose_tokens(logits.expand(n, -1), temperature=1.0, top_p=0.6, keys=keys)
    assert set(nucleus.tolist()) == {0, 1}  # 0.56 alone is not above 0.6; with 0.21 it is


def test_noise_hashed_a_few_rows_at_a_time_gives_the_same_draws(monkeypatch):
    import rlheal.engine.sampling as sampling

    logits = torch.randn(7, 40, generator=torch.Generator().manual_seed(2))
    keys = row_keys(9, torch.arange(7), torch.zeros(7, dtype=torch.int64), torch.arange(7))
    whole = choose_tokens(logits, temperature=0.8, top_p=0.9, keys=keys)
    monkeypatch.setattr(sampling, "NOISE_ELEMENTS", 100)  # two rows of 40 tokens at a time
    assert torch.equal(choose_tokens(logits, temperature=0.8, top_p=0.9, keys=keys), whole)


def test_a_draw_depends_on_its_key_only():
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(1))
    keys = row_keys(3, torch.arange(6), torch.tensor([0, 1, 0, 1, 0, 1]), torch.arange(6))
    together = choose_tokens(logits, temperature=1.0, keys=keys)
    alone = torch.cat([choose_tokens(logits[i:i + 1], temperature=1.0, keys=keys[i:i + 1]) for i in range(6)])
    assert torch.equal(together, alone)
    assert not torch.equal(row_keys(3, torch.arange(6), torch.zeros(6, dtype=torch.int64), torch.arange(6)),
                           row_keys(4, torch.arange(6), torch.zeros(6, dtype=torch.int64), torch.arange(6)))


# --- whole episodes -----------------------------------------------------------------------------------------
def same_episodes(a: list[PlayedEpisode], b: list[PlayedEpisode]) -> bool:
    return all(x.generations == y.generations and x.stopped == y.stopped and x.episode.turns == y.episode.turns
               for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 3, 16])
def test_greedy_episodes_equal_hf_generate(tiny_model, echo_task, slots):
    model, tokenizer = tiny_model
    problems = echo_task.problems("ood", 0, 7)
    decoding = Decoding(max_new_tokens=9)
    engine = play(echo_task, problems, EngineBackend(model, tokenizer, batch_size=slots), decoding=decoding)
    reference = play(echo_task, problems, HFBackend(model, tokenizer, batch_size=4), decoding=decoding)
    assert same_episodes(engine, reference)
    assert sum(pe.episode.n_attempts for pe in engine) > len(problems)  # feedback turns were played


ARCHITECTURES = {  # config class, model class, settings beyond the tiny shared ones (None: leave the field out)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # biased q/k/v projections
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),  # q/k norms
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"num_key_value_heads": None}),  # partial rotary
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"num_key_value_heads": None, "n_embd": 32, "n_layer": 2,
                                               "n_head": 4}),  # learned positions
}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_greedy_episodes_equal_hf_generate_across_architectures(architecture, tiny_tokenizer, echo_task):
    """The engine drives any causal LM whose attention layers call `cache.update` and take a 4-D mask: the
    same revision episodes as `HFBackend` on tiny random models of several families."""
    import transformers
    from conftest import tiny_model_options

    config_name, model_name, settings = ARCHITECTURES[architecture]
    tokenizer = tiny_tokenizer
    options = {**tiny_model_options(tokenizer), **settings}
    config = getattr(transformers, config_name)(**{k: v for k, v in options.items() if v is not None},
                                                attn_implementation="sdpa")
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    problems = echo_task.problems("ood", 0, 7)
    decoding = Decoding(max_new_tokens=9)
    engine = play(echo_task, problems, EngineBackend(model, tokenizer, batch_size=3), decoding=decoding)
    reference = play(echo_task, problems, HFBackend(model, tokenizer, batch_size=4), decoding=decoding)
    assert same_episodes(engine, reference)
    assert sum(pe.episode.n_attempts for pe in engine) > len(problems)


def test_sliding_window_models_are_refused_with_the_way_out(tiny_tokenizer):
    import transformers
    from conftest import tiny_model_options

    tokenizer = tiny_tokenizer
    config = transformers.Gemma2Config(**tiny_model_options(tokenizer), head_dim=8, attn_implementation="eager")
    model = transformers.Gemma2ForCausalLM(config).eval()
    with pytest.raises(RolloutError, match="full_attention, sliding_attention layers; the episode engine drives "
                                           "full-attention layers only: evaluate with --backend hf"):
        EngineBackend(model, tokenizer)


@pytest.mark.slow
def test_each_token_of_an_episodes_final_chat_is_fed_once(echo_task):
    """The KV slot is kept across attempts: a revision feeds only what its chat adds (the last sampled token,
    the end of the turn and the feedback), so the model sees each token of the final chat once, bar the last
    one sampled; re-encoding every attempt's chat, as `HFBackend` does, feeds more."""
    from rlheal.models.builtin import DET_RECIPE, shipped_base
    from rlheal.models.checkpoint import load_model
    from rlheal.tasks import get_task
    from rlheal.train.ppo import attempt_rows

    model, tokenizer = load_model(shipped_base(DET_RECIPE))
    task = get_task("det")
    engine = EngineBackend(model, tokenizer, batch_size=3)
    played = play(task, task.problems("ood", 0, 5), engine, max_attempts=3, decoding=Decoding(max_new_tokens=176))
    assert all(len(attempt_rows(pe.generations)[0]) == 1 for pe in played)  # every chat extends the last
    final = sum(len(pe.generations[-1].prompt_ids) + len(pe.generations[-1].completion_ids) - 1 for pe in played)
    assert engine.fed_tokens == final
    assert sum(len(g.prompt_ids) for pe in played for g in pe.generations) > final
    assert sum(pe.episode.n_attempts for pe in played) > len(played)


@pytest.mark.slow
def test_sampled_episodes_are_reproducible_and_independent_of_the_slots(tiny_model, echo_task):
    model, tokenizer = tiny_model
    problems = echo_task.problems("id", 0, 6)
    state = torch.random.get_rng_state()
    draws = [play(echo_task, problems, EngineBackend(model, tokenizer, batch_size=slots),
                  decoding=Decoding(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=seed))
             for slots, seed in ((2, 5), (6, 5), (2, 6))]
    assert torch.equal(state, torch.random.get_rng_state())
    assert same_episodes(draws[0], draws[1])
    assert [g.completion_ids for pe in draws[0] for g in pe.generations] != \
        [g.completion_ids for pe in draws[2] for g in pe.generations]


@pytest.mark.slow
def test_generate_answers_each_chat_as_hf_generate_does(tiny_model):
    from test_rollout import CHATS

    model, tokenizer = tiny_model
    engine = EngineBackend(model, tokenizer, batch_size=2).generate(CHATS, max_new_tokens=12, temperature=0, seed=0)
    assert engine == HFBackend(model, tokenizer).generate(CHATS, max_new_tokens=12, temperature=0, seed=0)
    assert EngineBackend(model, tokenizer).fits(CHATS, max_new_tokens=12) == [True] * 4


@pytest.mark.slow
def test_sampled_special_tokens_never_reach_the_next_prompt(tmp_path, make_tiny_checkpoint, echo_task):
    from rlheal.models.checkpoint import load_model
    from rlheal.models.tokenizer import char_tokenizer

    model, tokenizer = load_model(make_tiny_checkpoint(tmp_path / "c", tokenizer=char_tokenizer()))
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit equal: greedy picks token 0, the special <pad>
    played = play(echo_task, echo_task.problems("id", 0, 2), EngineBackend(model, tokenizer), max_attempts=2,
                  decoding=Decoding(max_new_tokens=4))
    specials = set(tokenizer.all_special_ids)
    for pe in played:
        first, second = pe.generations
        assert first.completion_ids == [0, 0, 0, 0] and first.text == ""
        assert second.prompt_ids[: len(first.prompt_ids)] == first.prompt_ids
        added = second.prompt_ids[len(first.prompt_ids):]
        assert tokenizer.pad_token_id not in added and [t for t in added if t in specials] == [
            tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|user|>", "<|end|>", "<|assistant|>")]
    assert same_episodes(played, play(echo_task, echo_task.problems("id", 0, 2), HFBackend(model, tokenizer),
                                      max_attempts=2, decoding=Decoding(max_new_tokens=4)))


@pytest.mark.slow
def test_episodes_that_outgrow_the_context_stop_as_with_hf_generate(tmp_path, make_tiny_checkpoint, echo_task):
    from rlheal.models.checkpoint import load_model

    model, tokenizer = load_model(make_tiny_checkpoint(tmp_path / "short", max_position_embeddings=80))
    problems = echo_task.problems("ood", 0, 3)
    decoding = Decoding(max_new_tokens=12)
    engine = play(echo_task, problems, EngineBackend(model, tokenizer, batch_size=2), decoding=decoding)
    assert {pe.stopped for pe in engine} == {"context"}
    assert same_episodes(engine, play(echo_task, problems, HFBackend(model, tokenizer), decoding=decoding))
    with pytest.raises(RolloutError, match="context of 80 tokens"):
        EngineBackend(model, tokenizer).generate([[{"role": "user", "content": "x" * 70}]], max_new_tokens=12,
                                                 temperature=0, seed=0)


@pytest.mark.slow
def test_evaluation_rows_equal_hf_generate_on_the_shipped_base(tmp_path):
    """A small run of the default study's evaluation (base `builtin:det`, det ID and OOD, 3 attempts)."""
    from rlheal.evaluate import EVALS, evaluate, hf_backend_loader
    from rlheal.models.builtin import DET_RECIPE, shipped_base
    from rlheal.store import Store

    base = shipped_base(DET_RECIPE)
    rows = {}
    for kind in ("hf", "engine"):
        with Store(tmp_path / kind) as store:
            evaluate(store, [base], ["det"], episodes=6, max_attempts=3, decoding=Decoding(max_new_tokens=176),
                     load_backend=hf_backend_loader(4, backend=kind), show_progress=False)
            rows[kind] = [{k: v for k, v in r.items() if k not in ("created", "versions")} for r in store.rows(EVALS)]
    assert rows["engine"] == rows["hf"] and len(rows["hf"]) == 2
    assert any(r["mean_attempts"] > 1 for r in rows["hf"])  # revisions were played


# --- play's two protocols and the backend factory ------------------------------------------------------------
class ScriptedEpisodes:
    """An episode backend whose attempt a (0-based) of a chat is script(first user turn, a)."""

    def __init__(self, script, room: int = 10**6):
        self.script, self.room = script, room

    def play_episodes(self, chats, referee, decoding):
        for i, chat in enumerate(chats):
            attempt = 0
            while chat is not None:
                chat = referee.judge(i, Generation(self.script(chat[0]["content"], attempt)))
                attempt += 1
                if chat is not None and sum(len(m["content"]) for m in chat) > self.room:
                    referee.out_of_context(i)
                    break


def test_play_hands_each_attempt_to_the_task_and_reports_progress(echo_task):
    problems = echo_task.problems("id", 0, 3)
    seen = []
    played = play(echo_task, problems, ScriptedEpisodes(lambda prompt, a: "x" if a < 2 else
                                                        prompt.removeprefix("Repeat the number ").rstrip(".")),
                  on_round=lambda done, total: seen.append((done, total)))
    assert [pe.episode.n_attempts for pe in played] == [3, 3, 3] and all(pe.episode.solved for pe in played)
    assert [pe.rewards for pe in played] == [[-3.0, -3.0, 5.0]] * 3
    assert seen == [(1, 3), (2, 3), (3, 3)]
    cramped = play(echo_task, problems, ScriptedEpisodes(lambda prompt, a: "y" * 30, room=60))
    assert [(pe.stopped, pe.episode.n_attempts) for pe in cramped] == [("context", 1)] * 3


def test_the_backend_factory_names_what_it_accepts_and_falls_back_for_unsupported_attention(tiny_model, caplog):
    model, tokenizer = tiny_model
    with pytest.raises(ValueError, match="backend must be one of engine, hf, got 'vllm'"):
        model_backend(model, tokenizer, kind="vllm")
    assert isinstance(model_backend(model, tokenizer), EngineBackend)
    implementation = model.config._attn_implementation
    try:
        model.config._attn_implementation = "flex_attention"
        with caplog.at_level("WARNING"):
            assert isinstance(model_backend(model, tokenizer, batch_size=3), HFBackend)
        assert "flex_attention attention; the episode engine needs sdpa or eager" in caplog.text
    finally:
        model.config._attn_implementation = implementation


# --- CUDA-graph decoding: the static-input path, with an eager stand-in for the capture ------------------------
@pytest.mark.slow
def test_decode_graphs_replay_with_each_steps_inputs_and_recapture_when_the_cache_grows(tiny_model, echo_task):
    from rlheal.engine.graphs import DecodeGraphs

    model, tokenizer = tiny_model
    captured = []

    def eager_capture(run, feed, cache):
        captured.append((feed.input_ids.shape[0], feed.width, cache.capacity))
        return lambda: run(feed, cache)  # replays read the static feed the graph would read

    engine = EngineBackend(model, tokenizer, batch_size=3)
    engine.graphs = DecodeGraphs(engine.run_feed, capture=eager_capture)
    problems = echo_task.problems("ood", 0, 7)
    decoding = Decoding(max_new_tokens=9)
    graphed = play(echo_task, problems, engine, decoding=decoding)
    assert same_episodes(graphed, play(echo_task, problems, HFBackend(model, tokenizer), decoding=decoding))
    assert captured and len(set(captured)) == len(captured)  # one capture per (rows, width, buffers)
    assert {rows for rows, _, _ in captured} >= {3, 1}  # full, then compacted batches
    assert len({capacity for _, _, capacity in captured}) > 1  # the cache grew: graphs were captured again


@pytest.mark.slow
def test_a_failed_capture_switches_graphs_off_with_a_warning(tiny_model, echo_task, caplog):
    from rlheal.engine.graphs import DecodeGraphs

    model, tokenizer = tiny_model

    def failing_capture(run, feed, cache):
        raise RuntimeError("operation not permitted when stream is capturing")

    engine = EngineBackend(model, tokenizer, batch_size=2)
    engine.graphs = DecodeGraphs(engine.run_feed, capture=failing_capture)
    problems = echo_task.problems("id", 0, 3)
    with caplog.at_level("WARNING"):
        played = play(echo_task, problems, engine, decoding=Decoding(max_new_tokens=5))
    assert not engine.graphs.enabled and "decoding without graphs" in caplog.text
    assert same_episodes(played, play(echo_task, problems, EngineBackend(model, tokenizer, batch_size=2),
                                      decoding=Decoding(max_new_tokens=5)))
