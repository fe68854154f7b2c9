"""The OpenAI-compatible backend against a local `/v1/chat/completions` server started by the tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from rlheal.openai_backend import OpenAIBackend  # noqa: E402
from rlheal.rollout import Decoding, RolloutError, play  # noqa: E402


class ChatServer:
    """A tiny server speaking OpenAI's chat completions for model `model`: each request's JSON body goes to
    `respond(body) -> text`; every body is kept in `requests`. Use as a context manager."""

    def __init__(self, respond, model: str = "tiny") -> None:
        self.respond, self.model, self.requests = respond, model, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if not self.path.endswith("/chat/completions") or body.get("model") != server.model:
                    self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                               "type": "NotFoundError", "code": 404}})
                    return
                text = server.respond(body)
                self._send(200, {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": server.model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def revise_once(body: dict) -> str:
    """Answers an echo prompt wrongly at first and rightly after feedback."""
    messages = body["messages"]
    number = messages[0]["content"].removeprefix("Repeat the number ").removesuffix(".")
    return number if len(messages) > 1 else "0"


def test_episodes_play_through_the_server_with_feedback_turns(echo_task):
    problems = echo_task.problems("id", 0, 5)
    with ChatServer(revise_once) as server:
        backend = OpenAIBackend(server.url, "tiny", concurrency=3)
        played = play(echo_task, problems, backend, decoding=Decoding(temperature=0.5, top_p=0.9, max_new_tokens=7,
                                                                       seed=4))
    assert [pe.episode.n_attempts for pe in played] == [2] * 5 and all(pe.episode.solved for pe in played)
    assert len(server.requests) == 10
    second = [r for r in server.requests if len(r["messages"]) == 3]
    assert len(second) == 5
    for request in second:
        assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
        assert request["messages"][1]["content"] == "0" and "Try again" in request["messages"][2]["content"]
    assert {(r["max_tokens"], r["temperature"], r["top_p"], r["model"]) for r in server.requests} == {
        (7, 0.5, 0.9, "tiny")}
    assert sorted(r["seed"] for r in server.requests if len(r["messages"]) == 1) == [
        (4 * 1_000_003 + 0 + i) % 2**31 for i in range(5)]  # round 0's seed plus the chat's place


def test_server_errors_are_rollout_errors_that_say_what_to_check(echo_task):
    chat = [[{"role": "user", "content": "Repeat the number 5."}]]
    with ChatServer(revise_once) as server:
        with pytest.raises(RolloutError, match="refused a chat completion for other.*does not exist.*--model"):
            OpenAIBackend(server.url, "other").generate(chat, max_new_tokens=4, temperature=0, seed=0)
        url = server.url
    with pytest.raises(RolloutError, match=f"cannot reach the server at {url}"):
        OpenAIBackend(url, "tiny", timeout=2).generate(chat, max_new_tokens=4, temperature=0, seed=0)


@pytest.mark.slow
def test_rlheal_eval_through_a_server_stores_the_rows_of_the_local_engine(tmp_path, tiny_checkpoint):
    """The server plays the tiny checkpoint with the engine; `rlheal eval --backend openai` must store the rows
    `rlheal eval --backend engine` stores."""
    from typer.testing import CliRunner

    from rlheal.cli import app
    from rlheal.engine import EngineBackend
    from rlheal.evaluate import EVALS
    from rlheal.models.checkpoint import load_model
    from rlheal.store import Store

    model, tokenizer = load_model(tiny_checkpoint)
    engine = EngineBackend(model, tokenizer)

    def complete(body: dict) -> str:
        return engine.generate([body["messages"]], max_new_tokens=body["max_tokens"],
                               temperature=body["temperature"], seed=body["seed"])[0].text

    common = [str(tiny_checkpoint), "--tasks", "det", "--episodes", "3", "--max-attempts", "2", "--max-new-tokens",
              "6", "--quiet"]
    runner = CliRunner()
    with ChatServer(complete) as server:
        served = runner.invoke(app, ["eval", *common, "--backend", "openai", "--base-url", server.url, "--model",
                                     "tiny", "--store", str(tmp_path / "served")])
    local = runner.invoke(app, ["eval", *common, "--store", str(tmp_path / "local")])
    assert served.exit_code == 0 and local.exit_code == 0, served.output + local.output
    rows = {}
    for name in ("served", "local"):
        with Store(tmp_path / name, readonly=True) as store:
            rows[name] = [{k: v for k, v in r.items() if k not in ("created", "versions")} for r in store.rows(EVALS)]
    assert rows["served"] == rows["local"] and len(rows["local"]) == 2
    assert any(r["mean_attempts"] > 1 for r in rows["local"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--backend", "openai", "--model", "m"], "--backend openai needs --base-url"),
    (["--base-url", "http://x/v1"], "--base-url and --model are for --backend openai"),
    (["--backend", "vllm"], "--backend must be one of engine, hf, openai"),
])
def test_rlheal_eval_rejects_backend_options_that_do_not_fit(tmp_path, tiny_checkpoint, extra, message):
    from typer.testing import CliRunner

    from rlheal.cli import app

    result = CliRunner().invoke(app, ["eval", str(tiny_checkpoint), "--store", str(tmp_path), *extra])
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "results.sqlite").exists()
