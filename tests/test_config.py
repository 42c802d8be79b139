"""load_config(): conversion from the dataclasses, every problem with file:line and key path,
units, ${ENV}, secrets, and the README reference generated from the same dataclasses."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aigw.config import (
    AuthConfig,
    AuthKey,
    CacheConfig,
    Config,
    HealthConfig,
    HookSpec,
    MetricsConfig,
    MockOptions,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    QuotaConfig,
    RateLimitConfig,
    RateLimitRule,
    Secret,
    ServerConfig,
    StateConfig,
    TargetConfig,
    TenantQuota,
    UsageConfig,
    config_reference_markdown,
    default_config,
    describe_settings,
    format_duration,
    format_size,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from aigw.errors import ConfigError, ConfigProblem

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
BROKEN = sorted((CONFIGS / "broken").glob("*.yaml"))
SAMPLES = sorted((ROOT / "sample-configs").glob("*.yaml"))

TEAM_KEY = "s3cr3t-team-key-XYZ"
# The environment the broken fixtures are loaded with; none of these values may leak.
BROKEN_ENV = {
    "AIGW_TEST_KEY": TEAM_KEY,
    "AIGW_TEST_KEY_2": "another-secret-QRS",
    "AIGW_TEST_KEY_SHA": hashlib.sha256(TEAM_KEY.encode()).hexdigest(),
    "AIGW_TEST_NOT_A_NUMBER": "eighty",
}
# Literal secrets written in the broken fixtures (which is the error) and URL passwords.
LEAKABLE = [
    TEAM_KEY,
    "another-secret-QRS",
    "sk-literal",
    "DO-NOT-PRINT",
    "sk-proj-1234567890abcdef",
    "hunter2",
    "literal-url-pw",
    "ghp_literal-token-in-user",
    "default-pw-in-file",
    "sk-literal-header",
    "tok-literal-header",
    "dXNlcjpwYXNz",
    "literal-cookie",
    "sk-default-in-file",
]

EXPECT_RE = re.compile(r"^# expect: (\S+) (.+?): (.+?)(?: \| (.+))?$", re.MULTILINE)


def problems_of(text: str, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yaml", env=env or {})
    return info.value.problems


MINIMAL = "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: p}]}}\n"


# --- broken fixtures: every problem, with its exact line and key path ----------------------


def test_there_are_enough_broken_fixtures() -> None:
    assert len(BROKEN) >= 12
    many = (CONFIGS / "broken" / "many_errors.yaml").read_text()
    assert len(EXPECT_RE.findall(many)) >= 10


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_config_reports_every_problem(path: Path) -> None:
    """Each fixture lists `# expect: LINE KEY: message | hint` for every problem it has."""
    expected = {}
    for line, key, message, hint in EXPECT_RE.findall(path.read_text()):
        where = (None if line == "-" else int(line), "" if key == "-" else key)
        expected[where] = (message, hint)
    assert expected, f"{path.name} declares no expectations"

    with pytest.raises(ConfigError) as info:
        load_config(path, env=BROKEN_ENV)
    problems = info.value.problems
    got = {(p.line, p.key): p for p in problems}

    assert len(got) == len(problems), "one problem per key path and line"
    assert set(got) == set(expected), "\n".join(p.format() for p in problems)
    for where, (message, hint) in expected.items():
        assert message in got[where].message, got[where].format()
        if hint:
            assert hint in (got[where].hint or ""), got[where].format()
    assert all(p.file == str(path) for p in problems)
    assert [p.line or 0 for p in problems] == sorted(p.line or 0 for p in problems)


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_config_never_shows_a_secret(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=BROKEN_ENV)
    text = str(info.value) + repr(info.value.problems)
    for secret in LEAKABLE:
        assert secret not in text


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    (problem,) = info.value.problems
    assert problem.file == str(tmp_path / "nope.yaml")
    assert problem.message == "no such file"


def test_yaml_syntax_error_does_not_quote_the_line() -> None:
    # PyYAML's own message includes a snippet of the offending line; ours must not.
    problems = problems_of('providers:\n  p: {api_key: "sk-snippet-secret, type: mock\n')
    (problem,) = problems
    assert problem.message.startswith("YAML syntax error")
    assert "sk-snippet-secret" not in problem.format()


# --- good configs ---------------------------------------------------------------------------

FULL_ENV = {
    "AIGW_TEST_PORT": "9090",
    "AIGW_TEST_REDIS_PASSWORD": "redis-pw",
    "AIGW_TEST_TEAM_A_KEY": "team-a-key",
    "AIGW_TEST_OPENAI_KEY": "sk-openai",
    "HOME": "/home/tester",
}


def test_full_config_parses_into_the_expected_dataclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/tester")  # `~` expands with the process's HOME
    path = CONFIGS / "good" / "full.yaml"
    config = load_config(path, env=FULL_ENV)
    remote = {
        "type": "openai",
        "timeout": 300.0,
        "connect_timeout": 3.0,
        "max_connections": 20,
        "headers": {"OpenAI-Organization": "org-default"},
    }
    expected = Config(
        version=1,
        server=ServerConfig(
            host="0.0.0.0",
            port=9090,
            admin_socket="/home/tester/aigw/admin.sock",
            max_body_size=1024 * 1024,
            shutdown_timeout=10.0,
            request_timeout=120.0,
            access_log=True,
        ),
        state=StateConfig(
            backend="redis",
            url="redis://:redis-pw@127.0.0.1:6379/2",
            flush_interval=0.25,
            on_failure="fail_closed",
        ),
        auth=AuthConfig(
            keys=(
                AuthKey(tenant="team-a", key=Secret("team-a-key")),
                AuthKey(
                    tenant="team-b",
                    key_sha256="3EB3FE66B31E3B4D10FA70B5CAD49C7112294AF6AE4E476A1C405155D45AA121",
                ),
            )
        ),
        providers={
            "openai": ProviderConfig(
                name="openai",
                base_url="https://api.openai.com/v1",
                api_key=Secret("sk-openai"),
                **remote,
            ),
            "other": ProviderConfig(
                name="other",
                base_url="https://other.example.com/v1",
                api_key=None,
                ca_file="/home/tester/certs/ca.pem",
                **remote,
            ),
            "demo": ProviderConfig(
                name="demo",
                type="mock",
                mock=MockOptions(
                    latency=0.05, chunk_delay=0.005, failure_rate=0.25, answer="hi", seed=7
                ),
            ),
        },
        models={
            "gpt-4o-mini": ModelConfig(
                name="gpt-4o-mini",
                strategy="weighted_random",
                targets=(
                    TargetConfig(provider="openai", model="gpt-4o-mini", weight=3),
                    TargetConfig(provider="other", model="gpt-4o-mini-2024-07-18", weight=1),
                ),
                fallbacks=("mock",),
                retries=1,
            ),
            "mock": ModelConfig(
                name="mock", targets=(TargetConfig(provider="demo", model="mock"),)
            ),
        },
        health=HealthConfig(
            error_rate_threshold=0.25,
            window=30.0,
            min_requests=5,
            cooldown=10.0,
            max_cooldown=120.0,
            check_interval=0.0,
        ),
        rate_limit=RateLimitConfig(
            requests_per_second=10.0,
            burst=20,
            tokens_per_minute=1000,
            tenants={
                "team-a": RateLimitRule(
                    requests_per_second=50.0, burst=100, tokens_per_minute=1000
                ),
                "team-b": RateLimitRule(requests_per_second=10.0, burst=20, tokens_per_minute=0),
            },
        ),
        quota=QuotaConfig(
            default=1_000_000,
            period="monthly",
            timezone="Europe/Paris",
            tenants={"team-a": 0, "free-tier": 10000},
            default_max_tokens=512,
        ),
        cache=CacheConfig(enabled=True, max_entries=100, max_bytes=10_000_000, ttl=3600.0),
        hooks=(
            HookSpec("validation"),
            HookSpec("content_filter", {"deny": ["(?i)password"]}),
            HookSpec(
                "audit", {"path": None, "redact_pii": True, "log_bodies": False, "tag": "none"}
            ),
            HookSpec("aigw.hooks.base:Hook"),
        ),
        metrics=MetricsConfig(enabled=False, tenant_label=False),
        source=str(path),
    )
    for section in dataclasses.fields(Config):  # section by section, for a readable diff
        if section.name != "warnings":
            assert getattr(config, section.name) == getattr(expected, section.name), section.name
    assert config == expected
    # It loads, with a warning for each thing that likely does not work as meant.
    assert [(w.line, w.key) for w in config.warnings] == [
        (4, "server.host"),
        (32, "providers.other.api_key"),
    ]


def test_minimal_config_gets_the_defaults() -> None:
    config = parse_config(MINIMAL, "min.yaml", env={})
    assert config.server == ServerConfig()
    assert config.state == StateConfig()
    assert config.health == HealthConfig()
    assert config.rate_limit == RateLimitConfig()
    assert config.quota == QuotaConfig()
    assert config.cache == CacheConfig(enabled=False)
    assert config.hooks == (HookSpec("validation"),)
    assert config.providers == {"p": ProviderConfig(name="p", type="mock")}
    assert config.models["m"].targets == (TargetConfig(provider="p", model="m", weight=1),)
    assert config.source == "min.yaml"


def test_none_means_the_built_in_default() -> None:
    config = load_config(None)
    assert config == default_config()
    assert config.source == "<built-in default>"
    assert list(config.models) == ["mock"]
    assert config.providers["mock"].type == "mock"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)


def test_empty_sections_mean_defaults() -> None:
    config = parse_config(MINIMAL + "server:\ncache:\nauth:\nhooks:\n", env={})
    assert config.server == ServerConfig()
    assert config.auth == AuthConfig()
    assert config.hooks == (HookSpec("validation"),)


def test_rate_limit_tenant_overrides_inherit_missing_keys() -> None:
    text = MINIMAL + (
        "rate_limit:\n"
        "  requests_per_second: 5\n  burst: 10\n  tokens_per_minute: 900\n"
        "  tenants: {a: {burst: 50}, b: ~, c: {requests_per_second: 1, tokens_per_minute: 0}}\n"
    )
    tenants = parse_config(text, env={}).rate_limit.tenants
    assert tenants["a"] == RateLimitRule(5.0, 50, 900)
    assert tenants["b"] == RateLimitRule(5.0, 10, 900)
    assert tenants["c"] == RateLimitRule(1.0, 10, 0)


def test_validation_hook_is_implied_once_and_order_is_kept() -> None:
    listed = parse_config(MINIMAL + "hooks: [audit, validation, content_filter]", env={})
    assert [h.name for h in listed.hooks] == ["audit", "validation", "content_filter"]
    implied = parse_config(MINIMAL + "hooks: [audit]", env={})
    assert [h.name for h in implied.hooks] == ["validation", "audit"]
    twice = problems_of(MINIMAL + "hooks: [validation, validation]")
    assert [(p.line, p.key) for p in twice] == [(3, "hooks[1]")]


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = (
        "providers:\n"
        "  a: &base {type: openai, base_url: 'https://a.example/v1', timeout: 7s}\n"
        "  b: {<<: *base, base_url: 'https://b.example/v1'}\n"
        "models: {m: {targets: [{provider: b}]}}\n"
    )
    b = parse_config(text, env={}).providers["b"]
    assert (b.base_url, b.timeout, b.name) == ("https://b.example/v1", 7.0, "b")


def test_plain_numbers_are_read_as_written_in_string_fields() -> None:
    sha = "1" * 64  # all-digit hex is an integer to YAML
    text = MINIMAL.replace(
        "m: {targets: [{provider: p}]}", "m: {targets: [{provider: p, model: 3.5}]}"
    )
    text += f"auth: {{keys: [{{tenant: 2024, key_sha256: {sha}}}]}}\n"
    config = parse_config(text, env={})
    assert config.models["m"].targets[0].model == "3.5"
    assert config.auth.keys[0] == AuthKey(tenant="2024", key_sha256=sha)


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("2 m", 120.0),
        ("0", 0.0),
        ("45", 45.0),
        (30, 30.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-5s", "1w", "", "s", "5sec", True, None, [1]])
def test_invalid_durations(text: object) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8MiB", 8 * 1024**2),
        ("100MB", 100 * 1000**2),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("2kb", 2000),
        ("1.5KiB", 1536),
        ("10B", 10),
        ("4096", 4096),
        (1024, 1024),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["8 megs", "-1MiB", "MiB", "", 1.5, True, None])
def test_invalid_sizes(text: object) -> None:
    assert parse_size(text) is None


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.25, 1.0, 30.0, 90.0, 300.0, 3600.0, 86400.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("size", [1, 1000, 1024, 1536, 8 * 1024**2, 100 * 1000**2, 1024**3])
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_units_in_config_fields() -> None:
    text = MINIMAL + "server: {max_body_size: 512KiB, shutdown_timeout: 1.5, request_timeout: 1d}"
    server = parse_config(text, env={}).server
    assert (server.max_body_size, server.shutdown_timeout, server.request_timeout) == (
        512 * 1024,
        1.5,
        86400.0,
    )


# --- ${ENV} ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "result"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {"A": ""}, ""),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("cost: $5", {}, "cost: $5"),
    ],
)
def test_env_substitution(value: str, env: dict[str, str], result: str) -> None:
    text = MINIMAL + f"providers: {{p: {{type: mock, mock: {{answer: '{value}'}}}}}}\n"
    text = text.replace("providers: {p: {type: mock}}\n", "", 1)
    assert parse_config(text, env=env).providers["p"].mock.answer == result


def test_env_substitution_then_typed() -> None:
    text = MINIMAL + "server: {port: '${PORT}', access_log: '${LOG}', shutdown_timeout: '${T}'}"
    server = parse_config(text, env={"PORT": "9001", "LOG": "true", "T": "2m"}).server
    assert (server.port, server.access_log, server.shutdown_timeout) == (9001, True, 120.0)


def test_missing_env_var_is_an_error_naming_the_variable() -> None:
    (problem,) = problems_of(MINIMAL + "server: {host: '${AIGW_NOPE}'}")
    assert (problem.line, problem.key) == (3, "server.host")
    assert "AIGW_NOPE is not set" in problem.message
    assert "${AIGW_NOPE:-default}" in (problem.hint or "")


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_TEST_HOST", "10.1.2.3")
    config = parse_config(MINIMAL + "server: {host: '${AIGW_TEST_HOST}'}")
    assert config.server.host == "10.1.2.3"


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_come_from_env_and_never_show() -> None:
    text = (
        "providers: {p: {type: openai, base_url: 'https://x.example/v1', api_key: '${OPENAI}'}}\n"
        "models: {m: {targets: [{provider: p}]}}\n"
        "auth: {keys: [{tenant: a, key: '${TEAM_A}'}]}\n"
    )
    config = parse_config(text, env={"OPENAI": "sk-VERYSECRET", "TEAM_A": "tk-VERYSECRET"})
    api_key = config.providers["p"].api_key
    assert isinstance(api_key, Secret)
    assert api_key.reveal() == "sk-VERYSECRET"
    assert config.auth.keys[0].digest() == hashlib.sha256(b"tk-VERYSECRET").digest()
    for text_form in (repr(config), str(config), repr(config.providers), str(api_key)):
        assert "VERYSECRET" not in text_form


def test_optional_secret_may_be_empty() -> None:
    text = (
        "providers: {p: {type: openai, base_url: 'https://x.example/v1', api_key: '${NOKEY:-}'}}\n"
        "models: {m: {targets: [{provider: p}]}}\n"
    )
    assert parse_config(text, env={}).providers["p"].api_key is None


def test_an_empty_tenant_key_is_an_error() -> None:
    (problem,) = problems_of(MINIMAL + "auth: {keys: [{tenant: a, key: '${K:-}'}]}")
    assert (problem.line, problem.key) == (3, "auth.keys[0].key")
    assert "empty" in problem.message


def test_secret_in_a_string_is_not_allowed() -> None:
    text = (
        "providers: {p: {type: openai, base_url: 'https://x.example/v1', "
        "api_key: 'Bearer ${K}'}}\nmodels: {m: {targets: [{provider: p}]}}\n"
    )
    (problem,) = problems_of(text, env={"K": "sk-abc"})
    assert problem.key == "providers.p.api_key"
    assert "environment" in problem.message
    assert "sk-abc" not in problem.format()


def test_duplicate_keys_are_reported_without_the_key() -> None:
    text = MINIMAL + "auth: {keys: [{tenant: a, key: '${K1}'}, {tenant: b, key: '${K2}'}]}"
    (problem,) = problems_of(text, env={"K1": "same-value", "K2": "same-value"})
    assert (problem.key, problem.message) == ("auth.keys[1]", "the same key as auth.keys[0]")
    assert "same-value" not in problem.format()


# --- did-you-mean -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "key", "guess"),
    [
        ("rate_limits: {}", "rate_limits", "rate_limit"),
        ("server: {prot: 1}", "server.prot", "port"),
        ("cache: {tll: 5m}", "cache.tll", "ttl"),
        ("state: {backend: sqlit}", "state.backend", "sqlite"),
        ("hooks: [adit]", "hooks[0]", "audit"),
    ],
)
def test_did_you_mean(snippet: str, key: str, guess: str) -> None:
    (problem,) = problems_of(MINIMAL + snippet)
    assert problem.key == key
    assert f"did you mean '{guess}'?" in (problem.hint or "")


# --- the README reference ---------------------------------------------------------------------


def test_every_setting_is_documented() -> None:
    settings = describe_settings()
    undocumented = [s.key for s in settings if not s.doc.strip()]
    assert undocumented == []
    keys = {s.key for s in settings}
    # Spot checks that nested sections are walked.
    for key in (
        "server.max_body_size",
        "providers.<name>.mock.failure_rate",
        "models.<name>.targets[].weight",
        "auth.keys[].key_sha256",
        "rate_limit.tenants.<tenant>.burst",
        "hooks",
    ):
        assert key in keys


def test_settings_cover_every_dataclass_field() -> None:
    keys = {s.key.rsplit(".", 1)[-1].removesuffix("[]") for s in describe_settings()}

    def walk(cls: Any) -> set[str]:
        names = set()
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            names.add(f.name)
        return names

    for cls in (ServerConfig, StateConfig, AuthKey, ProviderConfig, MockOptions, TargetConfig,
                ModelConfig, HealthConfig, RateLimitConfig, QuotaConfig, TenantQuota, PriceConfig,
                UsageConfig, CacheConfig, MetricsConfig, Config):  # fmt: skip
        assert walk(cls) <= keys, cls.__name__


README_START, README_END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def write_readme_reference() -> None:
    """Regenerate the README's config reference from the dataclasses."""
    path = ROOT / "README.md"
    text = path.read_text()
    head = text[: text.index(README_START) + len(README_START)]
    path.write_text(head + config_reference_markdown() + text[text.index(README_END) :])


def test_readme_config_reference_is_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_START in readme and README_END in readme
    region = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    assert region == config_reference_markdown(), (
        "README config reference is stale; regenerate it with:\n"
        "python -c 'from tests.test_config import write_readme_reference as w; w()'"
    )


# --- the sample configs -------------------------------------------------------------------------


def test_samples_exist() -> None:
    names = {p.name for p in SAMPLES}
    assert {"demo.yaml", "openai.yaml", "ollama-local.yaml", "multi-provider.yaml",
            "teams.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_loads_on_a_fresh_machine(path: Path) -> None:
    config = load_config(path, env={})  # no API keys set
    assert config.models
    for model in config.models.values():
        assert model.targets


def test_samples_use_their_keys_when_set() -> None:
    env = {"OPENAI_API_KEY": "sk-a", "GROQ_API_KEY": "gsk-b", "OPENROUTER_API_KEY": "or-c"}
    config = load_config(ROOT / "sample-configs" / "multi-provider.yaml", env=env)
    keys = {n: p.api_key.reveal() for n, p in config.providers.items() if p.api_key}
    assert keys == {"openai": "sk-a", "groq": "gsk-b", "openrouter": "or-c"}


# --- warnings: configs that load but will likely not work as meant ---------------------------


def warnings_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    return [w.format() for w in parse_config(text, "t.yaml", env=env or {}).warnings]


def test_an_empty_provider_key_is_a_warning_naming_the_variable() -> None:
    text = (
        "providers:\n"
        "  openai: {base_url: 'https://api.openai.com/v1', api_key: '${OPENAI_API_KEY:-}'}\n"
        "  local: {base_url: 'http://127.0.0.1:11434/v1'}\n"  # no key written: none needed
        "  team: {base_url: 'https://t.example/v1', headers: {Authorization: 'Bearer ${TOK:-}'}}\n"
        "models: {m: {targets: [{provider: openai}, {provider: local}, {provider: team}]}}\n"
    )
    assert warnings_of(text) == [
        "t.yaml:2: providers.openai.api_key: warning: the key is empty (OPENAI_API_KEY is unset "
        "or empty): requests go upstream without one (Hint: export OPENAI_API_KEY=<your key> "
        "before `aigw serve`, or remove api_key if this upstream needs none)",
        "t.yaml:4: providers.team.headers.Authorization: warning: header 'Authorization' is "
        "empty (TOK is unset or empty): requests go upstream without this credential "
        "(Hint: export TOK=<the credential> before `aigw serve`)",
    ]
    assert warnings_of(text, {"OPENAI_API_KEY": "sk-x", "TOK": "t"}) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gateway.lan"])
def test_a_listener_beyond_loopback_is_a_warning(host: str) -> None:
    (warning,) = warnings_of(f"server: {{host: '{host}'}}\n" + MINIMAL)
    assert warning.startswith("t.yaml:1: server.host: warning: listens on ")
    assert "reachable from your network" in warning and "add auth.keys" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_listener_is_not_warned_about(host: str) -> None:
    assert warnings_of(f"server: {{host: '{host}'}}\n" + MINIMAL) == []


def test_warnings_come_with_the_errors_of_a_broken_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server: {host: 0.0.0.0, port: -1}\n" + MINIMAL, "t.yaml", env={})
    assert [p.key for p in info.value.problems] == ["server.port"]
    assert [w.key for w in info.value.warnings] == ["server.host"]


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ("version: 1\nserver:\n\thost: 127.0.0.1\n", 3, "tabs"),
        ("version: 1\nmodels: {m: {targets: [{provider: p}]}\nproviders: {}\n", 2, "`{` opened"),
        ("version: 1\nhooks: [validation, audit\nmetrics: {}\n", 2, "`[` opened"),
        ('version: 1\nserver: {host: "127.0.0.1}\nstate: {}\n', 2, "quote opened"),
    ],
    ids=["tab", "brace", "bracket", "quote"],
)
def test_yaml_syntax_errors_get_a_hint_at_the_line_to_fix(text: str, line: int, hint: str) -> None:
    (problem,) = problems_of(text)
    assert problem.message.startswith("YAML syntax error")
    assert problem.line == line
    assert hint in (problem.hint or ""), problem.format()


def test_an_unknown_fallback_lists_the_models_that_exist() -> None:
    one = (
        "providers: {p: {type: mock}}\n"
        "models:\n  chat: {targets: [{provider: p}], fallbacks: [x]}\n"
    )
    (problem,) = problems_of(one)
    assert problem.key == "models.chat.fallbacks[0]"
    assert problem.hint == "'chat' is the only model defined: add 'x' under models:"
    two = one + "  small: {targets: [{provider: p}]}\n  big: {targets: [{provider: p}]}\n"
    (problem,) = problems_of(two)
    assert problem.hint == "expected one of: small, big"


# --- money: prices, budgets, the usage history --------------------------------------------------


def test_quota_tenants_take_tokens_or_a_mapping_with_usd() -> None:
    config = parse_config(
        MINIMAL + "quota:\n"
        "  default: 1000\n"
        "  default_usd: 5\n"
        "  tenants:\n"
        "    plain: 100\n"
        "    both: {tokens: 0, usd: 20.50}\n"
        "    money: {usd: '0.75'}\n"
        "    tokens: {tokens: 7}\n",
        "t.yaml",
        env={},
    )
    quota = config.quota
    assert quota.tenants == {"plain": 100, "both": 0, "tokens": 7}
    assert quota.tenants_usd == {"both": Decimal("20.50"), "money": Decimal("0.75")}
    assert quota.default_usd == 5 and quota.has_money_budget
    assert (quota.usd_for("both"), quota.usd_for("plain")) == (Decimal("20.50"), Decimal(5))
    # tokens of a tenant with only a money budget come from quota.default
    assert quota.tenants.get("money", quota.default) == 1000
    assert not QuotaConfig().has_money_budget
    assert not QuotaConfig(tenants_usd={"a": Decimal(0)}).has_money_budget


def test_prices_are_exact_decimals_as_written() -> None:
    config = parse_config(
        MINIMAL + "prices:\n"
        "  a: {input: 0.1, output: 0.2}\n"
        "  b: {input: '2.50', output: 1_000, cached_input: 0, cache_write: 3.75}\n"
        "  c: {input: '${PRICE}', output: 1e3}\n",
        "t.yaml",
        env={"PRICE": "0.075"},
    )
    assert config.prices == {
        "a": PriceConfig(input=Decimal("0.1"), output=Decimal("0.2")),
        "b": PriceConfig(Decimal("2.50"), Decimal(0), Decimal("3.75"), Decimal(1000)),
        "c": PriceConfig(input=Decimal("0.075"), output=Decimal(1000)),
    }
    assert config.prices["a"].input + config.prices["a"].output == Decimal("0.3")  # type: ignore[operator]
    # frozen and comparable: the same file loads equal (2.5 == 2.50 as numbers)
    again = parse_config(
        MINIMAL + "prices:\n  a: {input: 0.10, output: 0.20}\n  b: {input: 2.5, output: 1000, "
        "cached_input: 0, cache_write: 3.75}\n  c: {input: 0.075, output: 1000}\n",
        "t.yaml",
        env={},
    )
    assert again.prices == config.prices
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.prices["a"].input = Decimal(1)  # type: ignore[misc]


def test_the_usage_section_defaults() -> None:
    assert default_config().usage == UsageConfig(enabled=True, retention=90 * 86400.0,
                                                 flush_interval=10.0)  # fmt: skip
    config = parse_config(MINIMAL + "usage: {retention: 7d, flush_interval: 1m}\n", env={})
    assert (config.usage.retention, config.usage.flush_interval) == (7 * 86400.0, 60.0)
    assert TenantQuota() == TenantQuota(None, None)


MONEY = (
    "providers: {p: {type: mock}}\n"
    "models:\n"
    "  m:\n"
    "    targets:\n"
    "      - {provider: p, model: gpt-4o-2024-08-06}\n"  # priced through its snapshot
    "      - {provider: p, model: llama3.1}\n"
    "      - {provider: p, model: mystery}\n"
    "  other: {targets: [{provider: p, model: llama3.1}]}\n"  # the same model: warned once
)


def test_an_unpriced_routed_model_is_a_warning_when_a_money_budget_is_set() -> None:
    assert warnings_of(MONEY + "quota: {default_usd: 10}\n") == [
        "t.yaml:6: models.m.targets[1].model: warning: no price for upstream model 'llama3.1': "
        "a money budget is set, and its requests would cost $0 and never use it up "
        "(Hint: add `llama3.1: {input: …, output: …}` under prices: (USD per million tokens; "
        "0 for a free model))",
        "t.yaml:7: models.m.targets[2].model: warning: no price for upstream model 'mystery': "
        "a money budget is set, and its requests would cost $0 and never use it up "
        "(Hint: add `mystery: {input: …, output: …}` under prices: (USD per million tokens; "
        "0 for a free model))",
    ]
    # a tenant's budget counts too; pricing the models (free is a price) silences it
    priced = "prices: {llama3.1: {input: 0, output: 0}, mystery: {input: 1, output: 2}}\n"
    assert len(warnings_of(MONEY + "quota: {tenants: {a: {usd: 1}}}\n")) == 2
    assert warnings_of(MONEY + "quota: {tenants: {a: {usd: 1}}}\n" + priced) == []
    # no money budget, no warning: an unpriced model just costs 0
    assert warnings_of(MONEY) == []
    assert warnings_of(MONEY + "quota: {default: 100, tenants: {a: {usd: 0}}}\n") == []
