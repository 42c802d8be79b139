"""One registry per choice (provider types, state stores, hooks, strategies): the names the
config validates are the ones the loaders can load, and user hooks resolve the same way in
`aigw validate` and in the daemon. Loading a config runs no user code."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from aigw import choices
from aigw.balancer import Strategy, strategy_class
from aigw.config import HookSpec
from aigw.errors import StartupError
from aigw.hooks import build_hooks, hook_class
from aigw.hooks.base import Hook
from aigw.providers.base import Provider
from aigw.state.base import StateStore
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
HOOKS_TO_IMPORT = ROOT / "tests" / "configs" / "hooks_to_import" / "config.yaml"


@pytest.mark.parametrize(
    ("literal", "registry", "base"),
    [
        (choices.ProviderType, choices.PROVIDER_CLASSES, Provider),
        (choices.BackendName, choices.STORE_CLASSES, StateStore),
        (choices.StrategyName, choices.STRATEGY_CLASSES, Strategy),
        (None, choices.HOOK_CLASSES, Hook),
    ],
)
def test_every_registered_name_loads_what_it_names(
    literal: object, registry: dict[str, str], base: type
) -> None:
    if literal is not None:
        assert tuple(registry) == typing.get_args(literal)  # the config's choices are the keys
    for spec in registry.values():
        loaded = choices.import_string(spec)
        assert isinstance(loaded, type) and issubclass(loaded, base), spec


def test_import_string_walks_dotted_attributes_and_says_why_it_cannot() -> None:
    assert choices.import_string("tests.user_hooks:Outer.Inner").__name__ == "Inner"
    for spec, reason in (
        ("nodots", "is not of the form 'module:attr'"),
        ("aigw_no_such_module:X", "cannot import module 'aigw_no_such_module'"),
        ("tests.user_hooks:Outer.Nope", "has no attribute 'Outer.Nope'"),
    ):
        with pytest.raises(ImportError, match=reason):
            choices.import_string(spec)


def test_a_nested_user_hook_validates_and_loads_alike() -> None:
    """`pkg.mod:Outer.Inner` once passed `aigw validate` (which walked the dots) and failed at
    start-up (one getattr): both now resolve it with `import_string`."""
    assert hook_class("tests.user_hooks:Outer.Inner").__name__ == "Inner"
    [_, (spec, hook)] = build_hooks([HookSpec("tests.user_hooks:Outer.Inner")], ["m"])
    assert type(hook).__name__ == "Inner" and spec is not None
    assert strategy_class("latency").name == "latency"


def test_loading_a_config_imports_no_user_code() -> None:
    code = (
        "import sys\n"
        "from aigw.config import load_config\n"
        f"config = load_config({str(HOOKS_TO_IMPORT)!r})\n"
        "assert len(config.hooks) == 7, config.hooks\n"
        "assert 'tests.user_hooks' not in sys.modules, 'user code ran'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_validate_resolves_user_hooks_as_the_daemon_does() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aigw", "validate", str(HOOKS_TO_IMPORT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    where = f"{HOOKS_TO_IMPORT}:"
    assert lines == [
        f"{where}6: hooks[0]: cannot import module 'aigw_no_such_module': No module named "
        "'aigw_no_such_module' (Hint: is the package installed in the same environment as "
        "aigw?)",
        f"{where}7: hooks[1]: 'collections:OrderedDict' is not a subclass of aigw.hooks.base.Hook",
        f"{where}8: hooks[2]: module 'aigw.hooks.base' has no attribute 'NoSuchHook'",
        f"{where}10: hooks[4]: audit: max_bytes must be a size >= 1 byte (use a number of "
        "bytes or a number with a unit: 512KiB, 8MiB, 1GiB, 100MB), got -1",
        f"{where}11: hooks[5]: 'tests.user_hooks:Broken' is not a subclass of aigw.hooks.base.Hook",
    ], done.stdout
    assert "invalid config: 5 problems" in done.stderr


def test_a_hook_the_daemon_cannot_load_stops_it_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: p}]}}\n"
        'hooks: ["aigw_no_such_module:Hook"]\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aigw",
            "serve",
            "--config",
            str(cfg),
            "--port",
            "0",
            "--admin-socket",
            str(tmp_path / "a.sock"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert done.returncode == 3
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "hook 'aigw_no_such_module:Hook': cannot import module 'aigw_no_such_module': "
            "No module named 'aigw_no_such_module'"
        )
    ), done.stderr
    assert "Traceback" not in done.stderr


def test_build_hooks_names_the_hook_it_cannot_build() -> None:
    with pytest.raises(StartupError, match="hook 'audit': audit: max_bytes"):
        build_hooks([HookSpec("audit", {"max_bytes": -1})], ["m"])
