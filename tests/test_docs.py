"""The README documents every metric and every CLI command; the generated parts are current."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from aigw.cli import app
from aigw.metrics import METRICS_DOC, reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def _region(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} region"
    return m.group(1).strip()


def write_metrics_reference() -> None:
    """Regenerate the README's metrics table: python -c 'from tests.test_docs import *; w…()'."""
    text = README.read_text()
    new = reference_markdown()
    text = re.sub(
        r"(<!-- metrics-reference:start -->\n).*?(<!-- metrics-reference:end -->)",
        lambda m: m.group(1) + new + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(text)


def test_metrics_reference_is_current() -> None:
    region = _region(README.read_text(), "metrics-reference")
    assert region == reference_markdown(), (
        "README metrics table is stale: run "
        "python -c 'from tests.test_docs import write_metrics_reference as w; w()'"
    )
    for name, *_ in METRICS_DOC:
        assert f"`{name}`" in region


def _commands(group: object, prefix: str = "aigw") -> list[str]:
    out = []
    for name, command in sorted(getattr(group, "commands", {}).items()):
        full = f"{prefix} {name}"
        if getattr(command, "commands", None):
            out.extend(_commands(command, full))
        else:
            out.append(full)
    return out


def test_every_cli_command_and_option_is_documented() -> None:
    text = README.read_text()
    root = typer.main.get_command(app)
    commands = _commands(root)
    assert {
        "aigw serve",
        "aigw validate",
        "aigw status",
        "aigw quota set",
        "aigw quota show",
        "aigw quota reset",
        "aigw lb stats",
    } <= set(commands)
    for command in commands:
        assert f"`{command}" in text, f"README does not document `{command}`"
        click_command = root
        for part in command.split()[1:]:
            click_command = click_command.commands[part]  # type: ignore[attr-defined]
        row = next(line for line in text.splitlines() if line.startswith(f"| `{command}"))
        for param in click_command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt not in ("--help", "--admin-socket", "--config"):
                    assert opt in row, f"README row for `{command}` lacks {opt}"
