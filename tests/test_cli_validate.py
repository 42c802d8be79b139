"""`aigw validate`: exit codes, one `file:line: key: message` line per problem, the summary,
`--json`, `--request`, and no secret in any output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from aigw.cli import validate as validate_cli
from aigw.config import load_config
from aigw.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
SAMPLES = sorted((ROOT / "sample-configs").glob("*.yaml"))
SAMPLE_KEYS = ("OPENAI_API_KEY", "GROQ_API_KEY", "OPENROUTER_API_KEY")


@pytest.fixture
def app() -> typer.Typer:
    """A fresh app with only this command, so the test does not depend on other commands."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a callback keeps `validate` a subcommand, as in the real app
        pass

    validate_cli.register(app)
    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_valid_config_prints_a_summary(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "sample-configs" / "teams.yaml")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "config OK" in out
    for word in ("openai", "https://api.openai.com/v1", "gpt-4o-mini", "round_robin",
                 "team-a", "free-tier", "20,000 tokens daily", "sqlite", "content_filter",
                 "audit", "cache: on"):  # fmt: skip
        assert word in out, word
    # Tenants are shown by name; their key hashes are not.
    assert "50a734ef22b6" not in out


def test_summary_shows_weights_and_fallbacks(app: typer.Typer, runner: CliRunner) -> None:
    path = ROOT / "sample-configs" / "multi-provider.yaml"
    result = runner.invoke(app, ["validate", str(path), "--json"], env=dict.fromkeys(SAMPLE_KEYS))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    model = data["models"]["llama-3.1-8b"]
    assert model["strategy"] == "weighted_random"
    assert [(t["provider"], t["weight"]) for t in model["targets"]] == [
        ("groq", 4),
        ("openrouter", 3),
        ("ollama", 1),
    ]
    assert model["fallbacks"] == ["mock"]
    assert data["providers"]["groq"] == {
        "type": "openai",
        "base_url": "https://api.groq.com/openai/v1",
        "api_key": False,
    }


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_every_sample_validates_on_a_fresh_machine(
    app: typer.Typer, runner: CliRunner, path: Path
) -> None:
    result = runner.invoke(app, ["validate", str(path)], env=dict.fromkeys(SAMPLE_KEYS))
    assert result.exit_code == 0, result.output
    assert "config OK" in result.stdout


def test_every_problem_is_printed_with_file_line_and_key(
    app: typer.Typer, runner: CliRunner
) -> None:
    path = CONFIGS / "broken" / "many_errors.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    expected = info.value.problems

    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == [p.format() for p in expected]
    pattern = re.compile(rf"^{re.escape(str(path))}:(\d+): (\S+): .+")
    for line, problem in zip(lines, expected, strict=True):
        m = pattern.match(line)
        assert m, line
        assert (int(m.group(1)), m.group(2)) == (problem.line, problem.key)
    assert "providers.local.timout: unknown key 'timout' (Hint: did you mean 'timeout'?)" in (
        result.stdout
    )
    assert f"{len(expected)} problems" in result.stderr
    assert "sk-proj-1234567890abcdef" not in result.output


def test_no_secret_in_output(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "providers:\n"
        "  a: {base_url: 'https://a.example/v1', api_key: sk-LITERAL-SECRET}\n"
        "  b: {base_url: 'https://b.example/v1', api_key: '${AIGW_T_KEY}'}\n"
        "models: {m: {targets: [{provider: a}, {provider: b}]}}\n"
        "auth: {keys: [{tenant: t, key: '${AIGW_T_KEY}'}, {tenant: u, key: '${AIGW_T_KEY}'}]}\n"
        "state: {backend: redis, url: 'http://:PASSWORD-XYZ@h:1/0'}\n"
    )
    result = runner.invoke(app, ["validate", str(config)], env={"AIGW_T_KEY": "ENV-SECRET-123"})
    assert result.exit_code == 1
    assert [line.split(": ")[0:2] for line in result.stdout.splitlines()] == [
        [f"{config}:2", "providers.a.api_key"],
        [f"{config}:5", "auth.keys[1]"],
        [f"{config}:6", "state.url"],
    ]
    for secret in ("sk-LITERAL-SECRET", "ENV-SECRET-123", "PASSWORD-XYZ"):
        assert secret not in result.output


def test_valid_summary_hides_keys_and_url_passwords(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "providers: {a: {base_url: 'https://user:${UP}@a.example/v1', api_key: '${K}'}}\n"
        "models: {m: {targets: [{provider: a}]}}\n"
        "state: {backend: redis, url: 'redis://:${RP}@cache:6379/0'}\n"
    )
    env = {"K": "sk-SUMMARY-SECRET", "UP": "URLPASS", "RP": "REDISPASS"}
    for args in (["validate", str(config)], ["validate", str(config), "--json"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "a.example/v1" in result.stdout
        for secret in ("sk-SUMMARY-SECRET", "URLPASS", "REDISPASS"):
            assert secret not in result.output


def test_json_problems(app: typer.Typer, runner: CliRunner) -> None:
    path = CONFIGS / "broken" / "state.yaml"
    result = runner.invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["problems"] == [
        {
            "file": str(path),
            "line": 6,
            "key": "state.url",
            "message": "backend: redis needs a url",
            "hint": "url: redis://127.0.0.1:6379/0",
        }
    ]


def test_missing_file(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1
    assert result.stdout.strip() == f"{tmp_path / 'absent.yaml'}: no such file"


def test_without_path_uses_discovery(
    app: typer.Typer, runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AIGW_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-config-home"))
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "<built-in default>" in result.stdout

    broken = CONFIGS / "broken" / "version.yaml"
    result = runner.invoke(app, ["validate"], env={"AIGW_CONFIG": str(broken)})
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{broken}:3: version: ")


# --- --request -----------------------------------------------------------------------------


@pytest.fixture
def demo() -> str:
    return str(ROOT / "sample-configs" / "demo.yaml")


def write_json(tmp_path: Path, body: object) -> str:
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    return str(path)


def test_request_ok(app: typer.Typer, runner: CliRunner, demo: str, tmp_path: Path) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    result = runner.invoke(app, ["validate", demo, "--request", write_json(tmp_path, body)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("request OK")


def test_request_invalid_names_the_param(
    app: typer.Typer, runner: CliRunner, demo: str, tmp_path: Path
) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}
    result = runner.invoke(app, ["validate", demo, "--request", write_json(tmp_path, body)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "chat/completions: temperature: " in line


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        ({"model": "nope", "input": "x"}, "embeddings"),
        ({"model": "nope", "prompt": "x"}, "completions"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, "chat/completions"),
    ],
)
def test_request_endpoint_and_known_models(
    app: typer.Typer,
    runner: CliRunner,
    demo: str,
    tmp_path: Path,
    body: dict[str, object],
    endpoint: str,
) -> None:
    args = ["validate", demo, "--request", write_json(tmp_path, body), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["ok"], data["endpoint"], data["param"]) == (False, endpoint, "model")


def test_request_not_json(app: typer.Typer, runner: CliRunner, demo: str, tmp_path: Path) -> None:
    path = tmp_path / "body.json"
    path.write_text("{not json")
    result = runner.invoke(app, ["validate", demo, "--request", str(path)])
    assert result.exit_code == 1
    assert "invalid JSON" in result.stderr


def test_request_with_a_broken_config_reports_the_config(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    body = write_json(tmp_path, {"model": "m", "messages": []})
    broken = str(CONFIGS / "broken" / "version.yaml")
    result = runner.invoke(app, ["validate", broken, "--request", body])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{broken}:3: version:")


def test_registered_on_the_real_app() -> None:
    from aigw.cli import app as real_app  # a broken import must fail, never skip

    names = {c.name or c.callback.__name__ for c in real_app.registered_commands if c.callback}
    assert "validate" in names


WARNED = (
    "server: {host: 0.0.0.0}\n"
    "providers: {openai: {base_url: 'https://api.openai.com/v1', api_key: '${AIGW_T_KEY:-}'}}\n"
    "models: {m: {targets: [{provider: openai}]}}\n"
)


def test_warnings_print_as_file_line_key_and_keep_exit_0(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(WARNED)
    result = runner.invoke(app, ["validate", str(config)], env={"AIGW_T_KEY": None})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{config}:1: server.host: warning: listens on every network")
    assert "reachable from your network (Hint: " in lines[0]
    assert lines[1].startswith(f"{config}:2: providers.openai.api_key: warning: the key is empty")
    assert "config OK" in result.stdout


def test_warnings_are_a_separate_list_in_json(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(WARNED)
    result = runner.invoke(app, ["validate", str(config), "--json"], env={"AIGW_T_KEY": None})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the JSON document on stdout
    assert data["ok"] is True
    assert [(w["line"], w["key"]) for w in data["warnings"]] == [
        (1, "server.host"),
        (2, "providers.openai.api_key"),
    ]
    assert "AIGW_T_KEY" in data["warnings"][1]["message"]
    # A broken file lists its problems and, apart, its warnings.
    config.write_text(WARNED + "cache: {ttl: forever}\n")
    result = runner.invoke(app, ["validate", str(config), "--json"], env={"AIGW_T_KEY": None})
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [p["key"] for p in data["problems"]] == ["cache.ttl"]
    assert [w["key"] for w in data["warnings"]] == ["server.host", "providers.openai.api_key"]


def test_a_literal_secret_in_urls_or_headers_fails_without_echoing_it(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "state: {backend: redis, url: 'redis://:REDIS-PW-XYZ@cache:6379/0'}\n"
        "providers:\n"
        "  a: {base_url: 'https://u:URL-PW-XYZ@a.example/v1', headers: {x-api-key: KEY-XYZ}}\n"
        "models: {m: {targets: [{provider: a}]}}\n"
    )
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert [line.split(": ")[0:2] for line in result.stdout.splitlines()] == [
        [f"{config}:1", "state.url"],
        [f"{config}:3", "providers.a.base_url"],
        [f"{config}:3", "providers.a.headers.x-api-key"],
    ]
    assert "${REDIS_PASSWORD}" in result.stdout and "${UPSTREAM_TOKEN}" in result.stdout
    for secret in ("REDIS-PW-XYZ", "URL-PW-XYZ", "KEY-XYZ"):
        assert secret not in result.output
