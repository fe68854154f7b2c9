import json
import math

import pytest
import torch

from rlheal.models.checkpoint import load_model, read_manifest
from rlheal.models.tokenizer import char_tokenizer
from rlheal.store import Store
from rlheal.train.sft import (
    LOSSES,
    SFT_DIR,
    TRAIN_LOG,
    SFTConfig,
    SFTConfigError,
    answer_loss,
    answer_token_batch,
    load_sft_config,
    run_sft,
    sft_examples,
    step_folder,
)


def tiny_config(start, **changes) -> SFTConfig:
    settings = dict(model=str(start), n_train=24, steps=6, batch_size=4, lr=1e-2, warmup_steps=0,
                    schedule=[0, 2, 6], loss_eval_n=3, max_length=256)
    settings.update(changes)
    return SFTConfig(**settings)


def test_examples_are_conversational_prompt_completion_pairs():
    from rlheal.tasks import get_task

    task = get_task("gp24")
    examples = sft_examples([task], n=3, seed=5)
    p = task.problem("id", 5, 2)
    assert examples[2] == {"prompt": [{"role": "user", "content": task.prompt(p)}],
                           "completion": [{"role": "assistant", "content": task.answer(p)}]}
    assert all(e["completion"][0]["content"].startswith("numbers: ") for e in examples)


def test_answer_tokens_are_the_completion_and_its_end_token():
    tok = char_tokenizer()
    pairs = [("cards: A 2 | make 3", "formula: 1+2"), ("q", "xy")]
    inputs, labels = answer_token_batch(tok, pairs)
    for (prompt, answer), ids, lab in zip(pairs, inputs, labels, strict=True):
        kept = [t for t in lab if t != -100]
        assert tok.decode(kept) == answer + "<|end|>"
        assert lab[-len(kept):] == ids[-len(kept):]
        assert tok.decode(ids[: len(ids) - len(kept)]) == f"<bos><|user|>{prompt}<|end|><|assistant|>"


def test_answer_loss_of_a_uniform_model_is_log_vocab(make_tiny_checkpoint, tmp_path):
    import torch

    tok = char_tokenizer()
    model, _ = load_model(make_tiny_checkpoint(tmp_path / "m", tokenizer=tok, vocab_size=len(tok)))
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0 -> NLL = ln(vocab) per token
    loss, n = answer_loss(model, tok, [("abc", "formula: 1"), ("de", "ok")], batch_size=1)
    assert n == len("formula: 1") + 1 + len("ok") + 1
    assert loss == pytest.approx(math.log(len(tok)), rel=1e-6)


def test_config_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "sft.yaml"
    with pytest.raises(SFTConfigError, match="does not exist"):
        load_sft_config(path)
    path.write_text("steps: [1,\n")
    with pytest.raises(SFTConfigError, match="not valid YAML"):
        load_sft_config(path)
    path.write_text("steps: 0\nlr: -1\n")
    with pytest.raises(SFTConfigError, match=r"sft.yaml: field 'steps'.*field 'lr'"):
        load_sft_config(path)
    path.write_text("sft:\n  stepz: 3\n")
    with pytest.raises(SFTConfigError, match="field 'stepz'"):
        load_sft_config(path)
    path.write_text("tasks: [gp24, chess]\n")
    with pytest.raises(SFTConfigError, match="field 'tasks'.*chess"):
        load_sft_config(path)
    path.write_text("sft:\n  schedule: 'lin:4'\n  steps: 7\n")
    with pytest.raises(SFTConfigError, match="field 'schedule'"):
        load_sft_config(path)
    path.write_text("sft:\n  schedule: 'log:4'\n  steps: 7\n")
    assert load_sft_config(path).checkpoint_steps() == [0, 2, 3, 4, 7]  # 7**(1/4, 2/4, 3/4) = 1.6, 2.6, 4.3
    with pytest.raises(SFTConfigError, match=r"schedule: .*outside 0\.\.6"):
        SFTConfig(schedule=[0, 9], steps=6).checkpoint_steps()


@pytest.mark.slow
def test_sft_writes_exactly_the_scheduled_checkpoints_and_losses(make_tiny_checkpoint, tmp_path):
    start = make_tiny_checkpoint(tmp_path / "start", stage="base")
    cfg = tiny_config(start)
    out = tmp_path / "run"
    with Store(out) as store:
        folders = run_sft(cfg, out, store, progress=False)
        rows = store.rows(LOSSES)
    assert folders == [step_folder(out, s) for s in (0, 2, 6)]
    assert sorted(p.name for p in (out / SFT_DIR).iterdir() if not p.name.startswith(".")) == [
        "step-000000", "step-000002", "step-000006", TRAIN_LOG]
    for folder, step in zip(folders, (0, 2, 6), strict=True):
        manifest = read_manifest(folder)
        assert (manifest.stage, manifest.step, manifest.parent) == ("sft", step, str(start.resolve()))
        load_model(folder)
    assert sorted((r["step"], r["split"]) for r in rows) == [(s, sp) for s in (0, 2, 6) for sp in ("id", "ood")]
    id_loss = {r["step"]: r["loss"] for r in rows if r["split"] == "id"}
    assert id_loss[6] < id_loss[0]  # SFT lowers the teacher-forced loss of held-out ID answers
    history = json.loads((out / SFT_DIR / TRAIN_LOG).read_text())["history"]
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]

    # step 0 is the starting model itself
    w0, _ = load_model(folders[0])
    ws, _ = load_model(start)
    assert all((a == b).all() for a, b in zip(w0.state_dict().values(), ws.state_dict().values(), strict=True))


@pytest.mark.slow
def test_rerun_skips_saved_steps_recreates_missing_ones_and_refuses_other_configs(make_tiny_checkpoint, tmp_path):
    import shutil

    from safetensors.numpy import load_file

    start = make_tiny_checkpoint(tmp_path / "start", stage="base")
    cfg = tiny_config(start, steps=4, schedule=[0, 2, 4])
    out = tmp_path / "run"
    with Store(out) as store:
        run_sft(cfg, out, store, progress=False)
    kept = step_folder(out, 2) / "model.safetensors"
    stamp = kept.stat().st_mtime_ns
    reference = load_file(step_folder(out, 4) / "model.safetensors")
    shutil.rmtree(step_folder(out, 4))
    with Store(out) as store:
        run_sft(cfg, out, store, progress=False)
        assert len(store.rows(LOSSES)) == 6
    assert kept.stat().st_mtime_ns == stamp  # an existing checkpoint is never rewritten
    again = load_file(step_folder(out, 4) / "model.safetensors")
    assert all((again[k] == reference[k]).all() for k in reference)  # deterministic retraining

    (step_folder(out, 2) / "config.json").write_text("{oops")
    with Store(out) as store, pytest.raises(SFTConfigError, match=r"step-000002/config.json is corrupt.*Delete"):
        run_sft(cfg, out, store, progress=False)
    shutil.rmtree(step_folder(out, 2))
    stamp = (step_folder(out, 4) / "model.safetensors").stat().st_mtime_ns
    kept = step_folder(out, 4) / "model.safetensors"

    with Store(out) as store, pytest.raises(SFTConfigError, match="another SFT config"):
        run_sft(tiny_config(start, steps=4, schedule=[0, 2, 4], lr=5e-3), out, store, progress=False)
    assert kept.stat().st_mtime_ns == stamp


def test_cli_reports_a_bad_config_clearly_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from rlheal.cli import app

    config = tmp_path / "bad.yaml"
    config.write_text("sft:\n  lr: fast\n")
    result = CliRunner().invoke(app, ["sft", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "bad.yaml: field 'lr'" in result.output
    assert not (tmp_path / "run").exists()


def test_quick_config_is_valid():
    from pathlib import Path

    cfg = load_sft_config(Path(__file__).parents[1] / "configs" / "sft-quick.yaml")
    assert cfg.model == "builtin:det" and cfg.checkpoint_steps()[:3] == [0, 2, 3] and cfg.checkpoint_steps()[-1] == 300


@pytest.mark.slow
def test_gradient_checkpointing_is_off_by_default_and_changes_no_weight(make_tiny_checkpoint, tmp_path, monkeypatch):
    import trl
    from safetensors.torch import load_file

    used = []

    class Recording(trl.SFTTrainer):
        def train(self, *args, **kwargs):
            used.append(self.args.gradient_checkpointing)
            return super().train(*args, **kwargs)

    monkeypatch.setattr(trl, "SFTTrainer", Recording)
    start = make_tiny_checkpoint(tmp_path / "start", stage="base")
    weights = []
    for on in (False, True):
        out = tmp_path / f"run-{on}"
        with Store(out) as store:
            run_sft(tiny_config(start, schedule=[0, 6], gradient_checkpointing=on), out, store, progress=False)
        weights.append(load_file(step_folder(out, 6) / "model.safetensors"))
    assert used == [False, True]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert "gradient_checkpointing" not in tiny_config(start).model_dump()  # configs without it keep their hash
