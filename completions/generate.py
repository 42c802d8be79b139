"""Static shell completion scripts for `aigw`, generated from the CLI's own command tree.

Typer's built-in completion starts Python on every Tab; these scripts answer in the shell itself.
`render(shell)` walks `typer.main.get_command(app)` (commands, sub-commands, options with their
help, value hints: files, directories, choices) and prints a bash, zsh or fish script. The
committed copies in `completions/` are checked against `render()` by tests/test_completions.py.

Regenerate them with `python completions/generate.py [DIR]` (default: this folder). A build
tool, beside what it builds: the installed package never imports it.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

__all__ = [
    "FILENAMES",
    "SHELLS",
    "ArgumentSpec",
    "CommandSpec",
    "OptionSpec",
    "ValueHint",
    "command_tree",
    "render",
    "write_all",
]

#: The file each shell's script is committed as, in `completions/`.
FILENAMES: dict[str, str] = {"bash": "aigw.bash", "zsh": "_aigw", "fish": "aigw.fish"}
SHELLS: tuple[str, ...] = tuple(FILENAMES)

REGENERATE = "python completions/generate.py"

ValueKind = Literal["none", "value", "file", "dir", "choice"]

# Path-valued parameters the CLI types as plain `str` (so the type cannot tell): they complete
# file names all the same. A parameter typed `Path` needs no entry here.
_FILE_OPTIONS = frozenset({"--config", "--admin-socket", "--request"})
_FILE_METAVARS = frozenset({"PATH", "FILE"})


@dataclass(frozen=True, slots=True)
class ValueHint:
    """What a value completes to: nothing (`none`: a flag), free text, files, dirs or choices."""

    kind: ValueKind
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OptionSpec:
    names: tuple[str, ...]  # short ones first, e.g. ("-c", "--config")
    help: str
    metavar: str
    value: ValueHint
    multiple: bool

    @property
    def takes_value(self) -> bool:
        return self.value.kind != "none"


@dataclass(frozen=True, slots=True)
class ArgumentSpec:
    metavar: str
    help: str
    value: ValueHint
    required: bool
    variadic: bool


@dataclass(frozen=True, slots=True)
class CommandSpec:
    path: tuple[str, ...]  # ("aigw", "quota", "set")
    help: str
    options: tuple[OptionSpec, ...]  # sorted by name
    arguments: tuple[ArgumentSpec, ...]  # in command-line order
    commands: tuple[CommandSpec, ...]  # sorted by name

    @property
    def name(self) -> str:
        return self.path[-1]

    def walk(self) -> Iterator[CommandSpec]:
        """This command and every sub-command below it, depth first, in name order."""
        yield self
        for command in self.commands:
            yield from command.walk()


# --- reading the command tree -----------------------------------------------------------------
# Duck-typed on purpose: Typer's command objects come from its vendored click in recent releases
# and from click itself in older ones; both have the attributes read here.


def _one_line(text: str | None) -> str:
    """The first paragraph of a help text, on one line (click's `\\f` ends the help)."""
    if not text:
        return ""
    text = text.split("\f", 1)[0].replace("\b", "")
    paragraph = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    return " ".join(paragraph.split())


def _command_help(command: Any) -> str:
    short = getattr(command, "get_short_help_str", None)
    if callable(short):
        return _one_line(str(short(limit=200)))
    return _one_line(getattr(command, "short_help", None) or getattr(command, "help", None))


def _choices(param: Any) -> tuple[str, ...] | None:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        choices = descriptor.choices
    else:
        choices = getattr(getattr(param, "type", None), "choices", None)
    if choices is None:
        return None
    return tuple(str(getattr(choice, "value", choice)) for choice in choices)


def _path_kind(param: Any) -> ValueKind | None:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        if not (descriptor.is_path or descriptor.is_file):
            return None
        info = descriptor.parameter_info
    else:
        info = getattr(param, "type", None)
        if type(info).__name__ not in {"Path", "File"}:
            return None
    if not getattr(info, "file_okay", True) and getattr(info, "dir_okay", True):
        return "dir"
    return "file"


def _value_hint(param: Any, is_option: bool) -> ValueHint:
    if is_option and (getattr(param, "is_flag", False) or getattr(param, "count", False)):
        return ValueHint("none")
    choices = _choices(param)
    if choices is not None:
        return ValueHint("choice", choices)
    kind = _path_kind(param)
    if kind is not None:
        return ValueHint(kind)
    names = set(getattr(param, "opts", ())) if is_option else set()
    if names & _FILE_OPTIONS or (getattr(param, "metavar", None) or "") in _FILE_METAVARS:
        return ValueHint("file")
    return ValueHint("value")


def _metavar(param: Any) -> str:
    return str(getattr(param, "metavar", None) or param.name or "value").upper()


def _option(param: Any) -> OptionSpec:
    names = [*param.opts, *getattr(param, "secondary_opts", ())]
    return OptionSpec(
        names=tuple(sorted(names, key=lambda n: (n.startswith("--"), n))),
        help=_one_line(getattr(param, "help", None)),
        metavar=_metavar(param),
        value=_value_hint(param, is_option=True),
        multiple=bool(getattr(param, "multiple", False)),
    )


def _argument(param: Any) -> ArgumentSpec:
    return ArgumentSpec(
        metavar=_metavar(param),
        help=_one_line(getattr(param, "help", None)),
        value=_value_hint(param, is_option=False),
        required=bool(param.required),
        variadic=param.nargs == -1,
    )


def _spec(command: Any, path: tuple[str, ...], parent_ctx: Any) -> CommandSpec:
    settings = getattr(command, "context_settings", None) or {}  # e.g. help_option_names
    ctx = command.context_class(command, info_name=path[-1], parent=parent_ctx, **settings)
    options: list[OptionSpec] = []
    arguments: list[ArgumentSpec] = []
    for param in command.get_params(ctx):  # includes --help
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            arguments.append(_argument(param))
        else:
            options.append(_option(param))
    subcommands = getattr(command, "commands", {})
    children = tuple(
        _spec(subcommands[name], (*path, name), ctx)
        for name in sorted(subcommands)
        if not getattr(subcommands[name], "hidden", False)
    )
    return CommandSpec(
        path=path,
        help=_command_help(command),
        options=tuple(sorted(options, key=lambda o: (o.names[-1], o.names))),
        arguments=tuple(arguments),
        commands=children,
    )


def command_tree(cli: typer.Typer | None = None) -> CommandSpec:
    """The command tree of `cli` (default: the `aigw` app) as plain, comparable data."""
    if cli is None:
        from aigw.cli import app

        cli = app
    return _spec(typer.main.get_command(cli), ("aigw",), None)


# --- bash -----------------------------------------------------------------------------------


def _sh_quote(text: str) -> str:
    """A single-quoted word for bash and zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _comment(text: str) -> str:
    return f"  # {text}" if text else ""


_BASH_MAIN = r"""
# Fill COMPREPLY from compgen ARGS... for $cur, each match behind $prefix (from _aigw's scope).
_aigw_compgen() {
    local line
    while IFS= read -r line; do
        COMPREPLY+=("$prefix$line")
    done < <(compgen "$@" -- "$cur")
}

# Complete what an option or argument of kind $1 expects (choices in _aigw_choices).
_aigw_complete_kind() {
    case $1 in
        file) compopt -o filenames 2>/dev/null; _aigw_compgen -f ;;
        dir) compopt -o filenames 2>/dev/null; _aigw_compgen -d ;;
        choice) _aigw_compgen -W "$_aigw_choices" ;;
    esac
    return 0
}

_aigw() {
    local _aigw_reply _aigw_choices
    local cur=${COMP_WORDS[COMP_CWORD]} path=aigw word option='' prefix=''
    local -i i=1 argc=0 options_ended=0
    COMPREPLY=()
    # Walk the words before the cursor: descend into sub-commands, skip option values, count
    # positional arguments. With "=" in COMP_WORDBREAKS (the default) `--opt=value` arrives as
    # the three words `--opt`, `=`, `value`.
    while ((i < COMP_CWORD)); do
        word=${COMP_WORDS[i]}
        if ((!options_ended)) && [[ $word == -?* ]]; then
            if [[ $word == -- ]]; then
                options_ended=1
            elif [[ $word != *=* ]]; then
                _aigw_option "$path" "$word"
                if [[ $_aigw_reply != flag && $_aigw_reply != unknown ]]; then
                    if ((i + 1 == COMP_CWORD)); then
                        option=$word
                        break
                    fi
                    if [[ ${COMP_WORDS[i + 1]} == = ]]; then
                        i+=1
                        if ((i + 1 == COMP_CWORD)); then
                            option=$word
                            break
                        fi
                    fi
                    i+=1
                fi
            fi
        elif ((argc == 0)); then
            _aigw_commands "$path"
            if [[ " $_aigw_reply " == *" $word "* ]]; then
                path+=" $word"
            else
                argc=1
            fi
        else
            argc+=1
        fi
        i+=1
    done

    if [[ -n $option ]]; then
        [[ $cur == = ]] && cur=''
    elif ((!options_ended)) && [[ $cur == -?*=* ]]; then
        # `--opt=value` as one word ("=" not in COMP_WORDBREAKS): matches keep the `--opt=`.
        option=${cur%%=*}
        prefix=$option=
        cur=${cur#*=}
    fi
    if [[ -n $option ]]; then
        _aigw_option "$path" "$option"
        _aigw_complete_kind "$_aigw_reply"
        return 0
    fi
    if ((!options_ended)) && [[ $cur == -* ]]; then
        _aigw_options "$path"
        _aigw_choices=$_aigw_reply
        _aigw_complete_kind choice
        return 0
    fi
    if ((argc == 0)); then
        _aigw_commands "$path"
        if [[ -n $_aigw_reply ]]; then
            _aigw_choices=$_aigw_reply
            _aigw_complete_kind choice
            return 0
        fi
    fi
    _aigw_argument "$path" "$argc"
    if [[ $_aigw_reply == none && -z $cur ]] && ((!options_ended)); then
        # No argument left to type: show what can still be said.
        _aigw_options "$path"
        _aigw_choices=$_aigw_reply
        _aigw_reply=choice
    fi
    _aigw_complete_kind "$_aigw_reply"
    return 0
}

complete -F _aigw aigw
"""


def _bash_kind(hint: ValueHint) -> str:
    kind = {"none": "flag", "value": "value"}.get(hint.kind, hint.kind)
    if hint.kind == "choice":
        # compgen -W expands its word list and honours quotes in it: quote each choice.
        words = " ".join(shlex.quote(c) for c in hint.choices)
        return f"{kind} _aigw_choices={_sh_quote(words)}"
    return kind


def _render_bash(root: CommandSpec) -> str:
    commands = list(root.walk())
    out = [
        "# bash completion for aigw",
        *_header("#"),
        "# Install: echo 'source /path/to/completions/aigw.bash' >> ~/.bashrc",
        "#   (or copy it to ~/.local/share/bash-completion/completions/aigw)",
        "",
        "# Sub-commands of a command path.",
        "_aigw_commands() {",
        "    case $1 in",
    ]
    for command in commands:
        if command.commands:
            names = " ".join(c.name for c in command.commands)
            out.append(
                f"        {_sh_quote(' '.join(command.path))}) _aigw_reply={_sh_quote(names)} ;;"
            )
    out += ["        *) _aigw_reply='' ;;", "    esac", "}", ""]

    out += ["# Options of a command path.", "_aigw_options() {", "    case $1 in"]
    for command in commands:
        names = " ".join(n for o in command.options for n in o.names)
        out.append(
            f"        {_sh_quote(' '.join(command.path))}) _aigw_reply={_sh_quote(names)} ;;"
            + _comment(command.help)
        )
    out += ["        *) _aigw_reply='' ;;", "    esac", "}", ""]

    out += [
        "# What option $2 of command path $1 expects: flag (nothing), value (free text), file,",
        "# dir, choice (the words in _aigw_choices), or unknown.",
        "_aigw_option() {",
        "    _aigw_choices=''",
        '    case "$1 $2" in',
    ]
    for command in commands:
        prefix = " ".join(command.path)
        for option in command.options:
            keys = " | ".join(_sh_quote(f"{prefix} {name}") for name in option.names)
            out.append(
                f"        {keys}) _aigw_reply={_bash_kind(option.value)} ;;" + _comment(option.help)
            )
    out += ["        *) _aigw_reply=unknown ;;", "    esac", "}", ""]

    out += [
        "# What positional argument $2 (from 0) of command path $1 expects; none past the last.",
        "_aigw_argument() {",
        "    _aigw_choices=''",
        '    case "$1 $2" in',
    ]
    for command in commands:
        prefix = " ".join(command.path)
        for index, argument in enumerate(command.arguments):
            key = _sh_quote(f"{prefix} ") + "[0-9]*" if argument.variadic else None
            key = key or _sh_quote(f"{prefix} {index}")
            line = f"        {key}) _aigw_reply={_bash_kind(argument.value)} ;;"
            out.append(line + _comment(f"{argument.metavar}: {argument.help}".rstrip(": ")))
            if argument.variadic:
                break  # it takes every later word
    out += ["        *) _aigw_reply=none ;;", "    esac", "}"]
    return "\n".join(out) + "\n" + _BASH_MAIN


# --- zsh --------------------------------------------------------------------------------------


def _zsh_bracketed(text: str) -> str:
    """Escape an option's description for `[...]` in an `_arguments` spec (which is evaluated)."""
    return re.sub(r"([\\\[\]:$`])", r"\\\1", text)


def _zsh_message(text: str) -> str:
    """Escape a message of an `_arguments` spec: colons end it; it is a prompt format."""
    return text.replace(":", "\\:").replace("%", "%%")


def _zsh_word(text: str) -> str:
    """Escape a value for an `_arguments` action list `(a b c)`, which is evaluated."""
    return re.sub(r"([^A-Za-z0-9_.,+/@=-])", r"\\\1", text)


def _zsh_described(name: str, text: str) -> str:
    """A `name:description` item for `_describe`."""
    return re.sub(r"([\\:])", r"\\\1", name) + ":" + text.replace("\\", "\\\\")


def _zsh_action(hint: ValueHint) -> str:
    if hint.kind == "file":
        return "_files"
    if hint.kind == "dir":
        return "_files -/"
    if hint.kind == "choice":
        return "(" + " ".join(_zsh_word(c) for c in hint.choices) + ")"
    return " "  # a message, no matches


def _zsh_function(path: tuple[str, ...]) -> str:
    return "_" + "_".join(re.sub(r"[^A-Za-z0-9]", "_", part) for part in path)


def _zsh_option(option: OptionSpec) -> str:
    help_text = f"[{_zsh_bracketed(option.help)}]"
    value = ""
    if option.takes_value:
        value = f":{_zsh_message(option.metavar)}:{_zsh_action(option.value)}"
    repeat = "*" if option.multiple else ""

    def name(n: str) -> str:
        if not option.takes_value:
            return n
        return n + ("=" if n.startswith("--") else "+")  # `--opt=v`/`--opt v`, `-ov`/`-o v`

    if len(option.names) == 1:
        return _sh_quote(repeat + name(option.names[0]) + help_text + value)
    exclusive = "" if option.multiple else "(" + " ".join(option.names) + ")"
    names = "{" + ",".join(repeat + name(n) for n in option.names) + "}"
    return _sh_quote(exclusive) + names + _sh_quote(help_text + value)


def _zsh_argument(argument: ArgumentSpec) -> str:
    message = argument.metavar + (f" -- {argument.help}" if argument.help else "")
    colons = "*:" if argument.variadic else (":" if argument.required else "::")
    return _sh_quote(f"{colons}{_zsh_message(message)}:{_zsh_action(argument.value)}")


def _zsh_arguments(flags: str, specs: list[str], tail: str = "") -> list[str]:
    """An `_arguments` call, one spec a line."""
    lines = [f"    _arguments {flags}", *(f"        {spec}" for spec in specs)]
    return [line + " \\" for line in lines[:-1]] + [lines[-1] + tail]


def _zsh_command(command: CommandSpec) -> list[str]:
    function = _zsh_function(command.path)
    specs = [_zsh_option(o) for o in command.options]
    if not command.commands:
        specs += [_zsh_argument(a) for a in command.arguments]
        return [f"{function}() {{", *_zsh_arguments("-S", specs), "}"]
    title = " ".join(command.path)
    specs += ["':command:->command'", "'*::arg:->args'"]
    out = [
        f"{function}() {{",
        '    local curcontext="$curcontext" state state_descr line ret=1',
        "    typeset -A opt_args",
        *_zsh_arguments("-C -S", specs, " && ret=0"),
        "    case $state in",
        "        (command)",
        "            local -a commands",
        "            commands=(",
        *(f"                {_sh_quote(_zsh_described(c.name, c.help))}" for c in command.commands),
        "            )",
        f"            _describe -t commands {_sh_quote(title + ' command')} commands && ret=0",
        "            ;;",
        "        (args)",
        '            curcontext="${curcontext%:*:*}:' + "-".join(command.path) + '-$line[1]:"',
        "            case $line[1] in",
    ]
    for sub in command.commands:
        out.append(f"                ({sub.name}) {_zsh_function(sub.path)} && ret=0 ;;")
    out += ["            esac", "            ;;", "    esac", "    return ret", "}"]
    return out


def _render_zsh(root: CommandSpec) -> str:
    out = [
        "#compdef aigw",
        "# zsh completion for aigw",
        *_header("#"),
        "# Install: copy it as _aigw into a directory on $fpath before compinit runs",
        "#   (or `source` it after compinit).",
    ]
    for command in reversed(list(root.walk())):  # helpers before their callers
        out += ["", *_zsh_command(command)]
    out += [
        "",
        "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
        '    _aigw "$@"',
        "else",
        "    compdef _aigw aigw",
        "fi",
    ]
    return "\n".join(out) + "\n"


# --- fish -------------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_FISH_FUNCTIONS = r"""
# The command path of the words before the cursor, e.g. `aigw quota set`.
function __aigw_path
    set -l words (commandline -opc)
    set -e words[1]
    set -l path aigw
    set -l skip 0
    set -l argc 0
    set -l options_ended 0
    for word in $words
        if test $skip = 1
            set skip 0
        else if test $options_ended = 0; and test "$word" = --
            set options_ended 1
        else if test $options_ended = 0; and string match -q -- '-?*' $word
            if not string match -q -- '*=*' $word; and __aigw_takes_value "$path" $word
                set skip 1
            end
        else if test $argc = 0; and contains -- $word (__aigw_commands "$path")
            set -a path $word
        else
            set argc (math $argc + 1)
        end
    end
    echo $path
end

# True when the words before the cursor are exactly the command path $argv.
function __aigw_at
    test (__aigw_path) = "$argv"
end
"""


def _render_fish(root: CommandSpec) -> str:
    commands = list(root.walk())
    out = [
        "# fish completion for aigw",
        *_header("#"),
        "# Install: copy it to ~/.config/fish/completions/aigw.fish",
        "",
        "# Sub-commands of command path $argv[1], one a line.",
        "function __aigw_commands",
        "    switch $argv[1]",
    ]
    for command in commands:
        if command.commands:
            out += [
                f"        case {_fish_quote(' '.join(command.path))}",
                "            printf '%s\\n' " + " ".join(c.name for c in command.commands),
            ]
    out += [
        "    end",
        "end",
        "",
        "# True when option $argv[2] of command path $argv[1] takes a value.",
    ]
    out += ["function __aigw_takes_value", '    switch "$argv[1] $argv[2]"']
    valued = [
        _fish_quote(f"{' '.join(c.path)} {name}")
        for c in commands
        for o in c.options
        if o.takes_value
        for name in o.names
    ]
    if valued:
        out += ["        case " + " ".join(valued), "            return 0"]
    out += ["    end", "    return 1", "end"]
    out += [_FISH_FUNCTIONS, "complete -c aigw -f  # no file names unless a value is a path"]
    for command in commands:
        at = f"-n {_fish_quote('__aigw_at ' + ' '.join(command.path))}"
        out += ["", f"# {' '.join(command.path)}"]
        for sub in command.commands:
            line = f"complete -c aigw {at} -a {_fish_quote(sub.name)}"
            out.append(line + (f" -d {_fish_quote(sub.help)}" if sub.help else ""))
        for option in command.options:
            names = " ".join(
                f"-l {_fish_quote(n[2:])}" if n.startswith("--") else f"-s {_fish_quote(n[1:])}"
                for n in option.names
            )
            out.append(
                f"complete -c aigw {at} {names}{_fish_value(option.value)}"
                + (f" -d {_fish_quote(option.help)}" if option.help else "")
            )
        if not command.commands:
            # fish cannot tell argument positions apart: offer the union of what they take.
            hints = {a.value.kind for a in command.arguments}
            choices = sorted({c for a in command.arguments for c in a.value.choices})
            if "file" in hints:
                out.append(f"complete -c aigw {at} -F")
            elif "dir" in hints:
                out.append(f"complete -c aigw {at}{_fish_value(ValueHint('dir'))}")
            if choices:
                out.append(f"complete -c aigw {at} -a {_fish_choices(choices)}")
    return "\n".join(out) + "\n"


def _fish_choices(choices: Iterable[str]) -> str:
    """The argument of `complete -a`: fish splits and expands it again, so escape each word."""
    words = " ".join(re.sub(r"([^A-Za-z0-9_.,+/@=:%-])", r"\\\1", c) for c in choices)
    return _fish_quote(words)


def _fish_value(hint: ValueHint) -> str:
    if hint.kind == "none":
        return ""
    if hint.kind == "file":
        return " -r -F"
    if hint.kind == "dir":
        return " -x -a '(__fish_complete_directories)'"
    if hint.kind == "choice":
        return f" -x -a {_fish_choices(hint.choices)}"
    return " -x"


# --- entry points -----------------------------------------------------------------------------


def _header(comment: str) -> list[str]:
    return [
        f"{comment}",
        f"{comment} Generated from the aigw command tree by completions/generate.py;",
        f"{comment} do not edit. Regenerate: {REGENERATE}",
        f"{comment}",
    ]


_RENDERERS = {"bash": _render_bash, "zsh": _render_zsh, "fish": _render_fish}


def render(shell: str, cli: typer.Typer | None = None) -> str:
    """The completion script for `shell` ("bash", "zsh" or "fish") of `cli` (default: aigw)."""
    renderer = _RENDERERS.get(shell)
    if renderer is None:
        raise ValueError(f"unknown shell {shell!r}; expected one of: {', '.join(SHELLS)}")
    return renderer(command_tree(cli))


def default_directory() -> Path:
    """`completions/` at the repository root (where this file is)."""
    return Path(__file__).resolve().parent


def write_all(directory: Path) -> list[Path]:
    """Write every shell's script into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    tree = command_tree()
    written = []
    for shell, filename in FILENAMES.items():
        target = directory / filename
        target.write_text(_RENDERERS[shell](tree), encoding="utf-8", newline="\n")
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"usage: {REGENERATE} [DIRECTORY]", file=sys.stderr)
        return 2
    directory = Path(argv[0]) if argv else default_directory()
    if not argv and not (directory.parent / "pyproject.toml").is_file():
        # An installed package has no repository around it to write into.
        print(f"not in a source checkout; usage: {REGENERATE} DIRECTORY", file=sys.stderr)
        return 2
    for path in write_all(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
