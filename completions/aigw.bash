# bash completion for aigw
#
# Generated from the aigw command tree by completions/generate.py;
# do not edit. Regenerate: python completions/generate.py
#
# Install: echo 'source /path/to/completions/aigw.bash' >> ~/.bashrc
#   (or copy it to ~/.local/share/bash-completion/completions/aigw)

# Sub-commands of a command path.
_aigw_commands() {
    case $1 in
        'aigw') _aigw_reply='lb quota reload serve status usage validate version' ;;
        'aigw lb') _aigw_reply='stats' ;;
        'aigw quota') _aigw_reply='reset set show' ;;
        *) _aigw_reply='' ;;
    esac
}

# Options of a command path.
_aigw_options() {
    case $1 in
        'aigw') _aigw_reply='-h --help --install-completion --show-completion -V --version' ;;  # A local AI gateway: OpenAI-compatible proxy with tenants, limits and failover.
        'aigw lb') _aigw_reply='-h --help' ;;  # Load balancing of the running daemon.
        'aigw lb stats') _aigw_reply='--admin-socket -c --config -h --help --interval --json --model --once' ;;  # Per model and target: health, circuit, traffic, errors, latency.
        'aigw quota') _aigw_reply='-h --help' ;;  # Per-tenant token quotas and money budgets of the running daemon.
        'aigw quota reset') _aigw_reply='--admin-socket -c --config -h --help' ;;  # Zero a tenant's usage and spending in its current period.
        'aigw quota set') _aigw_reply='--admin-socket -c --config -h --help --period --usd' ;;  # Set a tenant's token quota or money budget at runtime (persisted; wins over the config).
        'aigw quota show') _aigw_reply='--admin-socket -c --config -h --help --json' ;;  # Usage per tenant: input/output/total tokens, limit, % used, cost, money budget, next reset.
        'aigw reload') _aigw_reply='--admin-socket -c --config -h --help --json' ;;  # Tell the running daemon to re-read its config file (as SIGHUP does); the running config stays when the file does not load.
        'aigw serve') _aigw_reply='--access-log --admin-socket -c --config -h --help --host --log-level --loop -p --port -w --workers' ;;  # Run the gateway daemon in the foreground (SIGTERM/SIGINT drain, SIGHUP reloads).
        'aigw status') _aigw_reply='--admin-socket -c --config -h --help --json' ;;  # Show the running daemon: pid, version, uptime, config, listen address (and workers).
        'aigw usage') _aigw_reply='--admin-socket --by -c --config --csv -h --help --json --model --since --tenant' ;;  # Usage history: requests, tokens (input, cached, output), cost and errors.
        'aigw validate') _aigw_reply='-h --help --json --request' ;;  # Check a config file offline: exit 0 when valid, 1 with every problem otherwise.
        'aigw version') _aigw_reply='-h --help --json' ;;  # Print aigw's version (and, with --json, the Python it runs on).
        *) _aigw_reply='' ;;
    esac
}

# What option $2 of command path $1 expects: flag (nothing), value (free text), file,
# dir, choice (the words in _aigw_choices), or unknown.
_aigw_option() {
    _aigw_choices=''
    case "$1 $2" in
        'aigw -h' | 'aigw --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw --install-completion') _aigw_reply=flag ;;  # Install completion for the current shell.
        'aigw --show-completion') _aigw_reply=flag ;;  # Show completion for the current shell, to copy it or customize the installation.
        'aigw -V' | 'aigw --version') _aigw_reply=flag ;;  # Print aigw's version and exit.
        'aigw lb -h' | 'aigw lb --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw lb stats --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw lb stats -c' | 'aigw lb stats --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw lb stats -h' | 'aigw lb stats --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw lb stats --interval') _aigw_reply=value ;;  # Seconds between live refreshes.
        'aigw lb stats --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        'aigw lb stats --model') _aigw_reply=value ;;  # Show only this model.
        'aigw lb stats --once') _aigw_reply=flag ;;  # Print one snapshot and exit.
        'aigw quota -h' | 'aigw quota --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw quota reset --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw quota reset -c' | 'aigw quota reset --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw quota reset -h' | 'aigw quota reset --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw quota set --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw quota set -c' | 'aigw quota set --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw quota set -h' | 'aigw quota set --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw quota set --period') _aigw_reply=choice _aigw_choices='hourly daily weekly monthly never' ;;  # Quota period: hourly, daily, weekly, monthly or never (default: the tenant's current period).
        'aigw quota set --usd') _aigw_reply=flag ;;  # Set the tenant's money budget (US dollars per period, priced with `prices:`) instead of its token quota; either limit can refuse a request.
        'aigw quota show --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw quota show -c' | 'aigw quota show --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw quota show -h' | 'aigw quota show --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw quota show --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        'aigw reload --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw reload -c' | 'aigw reload --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw reload -h' | 'aigw reload --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw reload --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        'aigw serve --access-log') _aigw_reply=flag ;;  # Log one line per request.
        'aigw serve --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw serve -c' | 'aigw serve --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw serve -h' | 'aigw serve --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw serve --host') _aigw_reply=value ;;  # Listen address (overrides server.host).
        'aigw serve --log-level') _aigw_reply=choice _aigw_choices='debug info warning error' ;;  # How much to log.
        'aigw serve --loop') _aigw_reply=choice _aigw_choices='auto asyncio uvloop' ;;  # Event loop: uvloop when installed (auto), or plain asyncio.
        'aigw serve -p' | 'aigw serve --port') _aigw_reply=value ;;  # Listen port (overrides server.port).
        'aigw serve -w' | 'aigw serve --workers') _aigw_reply=value ;;  # Worker processes sharing the port (SO_REUSEPORT); more than 1 needs state.backend: redis.
        'aigw status --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw status -c' | 'aigw status --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw status -h' | 'aigw status --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw status --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        'aigw usage --admin-socket') _aigw_reply=file ;;  # Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).
        'aigw usage --by') _aigw_reply=choice _aigw_choices='hour day tenant model' ;;  # One line per hour, day, tenant or model (default: hour for up to 2 days, else day).
        'aigw usage -c' | 'aigw usage --config') _aigw_reply=file ;;  # Config file (default: $AIGW_CONFIG, then the user config).
        'aigw usage --csv') _aigw_reply=flag ;;  # Print CSV for spreadsheets.
        'aigw usage -h' | 'aigw usage --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw usage --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        'aigw usage --model') _aigw_reply=value ;;  # Only this model.
        'aigw usage --since') _aigw_reply=value ;;  # How far back: a number of minutes, hours, days or weeks (90m, 24h, 7d, 30d, 2w; at most 366d).
        'aigw usage --tenant') _aigw_reply=value ;;  # Only this tenant.
        'aigw validate -h' | 'aigw validate --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw validate --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        'aigw validate --request') _aigw_reply=file ;;  # Also check this JSON request body with the daemon's validator.
        'aigw version -h' | 'aigw version --help') _aigw_reply=flag ;;  # Show this message and exit.
        'aigw version --json') _aigw_reply=flag ;;  # Print JSON for scripts.
        *) _aigw_reply=unknown ;;
    esac
}

# What positional argument $2 (from 0) of command path $1 expects; none past the last.
_aigw_argument() {
    _aigw_choices=''
    case "$1 $2" in
        'aigw quota reset 0') _aigw_reply=value ;;  # TENANT: Tenant name.
        'aigw quota set 0') _aigw_reply=value ;;  # TENANT: Tenant name.
        'aigw quota set 1') _aigw_reply=value ;;  # TOKENS: Tokens per period: 0 (unlimited) up to 1,000,000,000,000,000 (10^15); 100_000 and 100,000 are read as 100000. With --usd: US dollars per period (20, 20.50, $1,000; 0 = no money budget).
        'aigw quota show 0') _aigw_reply=value ;;  # TENANT: Only this tenant.
        'aigw validate 0') _aigw_reply=file ;;  # PATH: Config file (default: $AIGW_CONFIG, then the user config, then the built-in one).
        *) _aigw_reply=none ;;
    esac
}

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
