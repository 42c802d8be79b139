# fish completion for aigw
#
# Generated from the aigw command tree by completions/generate.py;
# do not edit. Regenerate: python completions/generate.py
#
# Install: copy it to ~/.config/fish/completions/aigw.fish

# Sub-commands of command path $argv[1], one a line.
function __aigw_commands
    switch $argv[1]
        case 'aigw'
            printf '%s\n' lb quota reload serve status usage validate version
        case 'aigw lb'
            printf '%s\n' stats
        case 'aigw quota'
            printf '%s\n' reset set show
    end
end

# True when option $argv[2] of command path $argv[1] takes a value.
function __aigw_takes_value
    switch "$argv[1] $argv[2]"
        case 'aigw lb stats --admin-socket' 'aigw lb stats -c' 'aigw lb stats --config' 'aigw lb stats --interval' 'aigw lb stats --model' 'aigw quota reset --admin-socket' 'aigw quota reset -c' 'aigw quota reset --config' 'aigw quota set --admin-socket' 'aigw quota set -c' 'aigw quota set --config' 'aigw quota set --period' 'aigw quota show --admin-socket' 'aigw quota show -c' 'aigw quota show --config' 'aigw reload --admin-socket' 'aigw reload -c' 'aigw reload --config' 'aigw serve --admin-socket' 'aigw serve -c' 'aigw serve --config' 'aigw serve --host' 'aigw serve --log-level' 'aigw serve --loop' 'aigw serve -p' 'aigw serve --port' 'aigw serve -w' 'aigw serve --workers' 'aigw status --admin-socket' 'aigw status -c' 'aigw status --config' 'aigw usage --admin-socket' 'aigw usage --by' 'aigw usage -c' 'aigw usage --config' 'aigw usage --model' 'aigw usage --since' 'aigw usage --tenant' 'aigw validate --request'
            return 0
    end
    return 1
end

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

complete -c aigw -f  # no file names unless a value is a path

# aigw
complete -c aigw -n '__aigw_at aigw' -a 'lb' -d 'Load balancing of the running daemon.'
complete -c aigw -n '__aigw_at aigw' -a 'quota' -d 'Per-tenant token quotas and money budgets of the running daemon.'
complete -c aigw -n '__aigw_at aigw' -a 'reload' -d 'Tell the running daemon to re-read its config file (as SIGHUP does); the running config stays when the file does not load.'
complete -c aigw -n '__aigw_at aigw' -a 'serve' -d 'Run the gateway daemon in the foreground (SIGTERM/SIGINT drain, SIGHUP reloads).'
complete -c aigw -n '__aigw_at aigw' -a 'status' -d 'Show the running daemon: pid, version, uptime, config, listen address (and workers).'
complete -c aigw -n '__aigw_at aigw' -a 'usage' -d 'Usage history: requests, tokens (input, cached, output), cost and errors.'
complete -c aigw -n '__aigw_at aigw' -a 'validate' -d 'Check a config file offline: exit 0 when valid, 1 with every problem otherwise.'
complete -c aigw -n '__aigw_at aigw' -a 'version' -d 'Print aigw\'s version (and, with --json, the Python it runs on).'
complete -c aigw -n '__aigw_at aigw' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw' -l 'install-completion' -d 'Install completion for the current shell.'
complete -c aigw -n '__aigw_at aigw' -l 'show-completion' -d 'Show completion for the current shell, to copy it or customize the installation.'
complete -c aigw -n '__aigw_at aigw' -s 'V' -l 'version' -d 'Print aigw\'s version and exit.'

# aigw lb
complete -c aigw -n '__aigw_at aigw lb' -a 'stats' -d 'Per model and target: health, circuit, traffic, errors, latency.'
complete -c aigw -n '__aigw_at aigw lb' -s 'h' -l 'help' -d 'Show this message and exit.'

# aigw lb stats
complete -c aigw -n '__aigw_at aigw lb stats' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw lb stats' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw lb stats' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw lb stats' -l 'interval' -x -d 'Seconds between live refreshes.'
complete -c aigw -n '__aigw_at aigw lb stats' -l 'json' -d 'Print JSON for scripts.'
complete -c aigw -n '__aigw_at aigw lb stats' -l 'model' -x -d 'Show only this model.'
complete -c aigw -n '__aigw_at aigw lb stats' -l 'once' -d 'Print one snapshot and exit.'

# aigw quota
complete -c aigw -n '__aigw_at aigw quota' -a 'reset' -d 'Zero a tenant\'s usage and spending in its current period.'
complete -c aigw -n '__aigw_at aigw quota' -a 'set' -d 'Set a tenant\'s token quota or money budget at runtime (persisted; wins over the config).'
complete -c aigw -n '__aigw_at aigw quota' -a 'show' -d 'Usage per tenant: input/output/total tokens, limit, % used, cost, money budget, next reset.'
complete -c aigw -n '__aigw_at aigw quota' -s 'h' -l 'help' -d 'Show this message and exit.'

# aigw quota reset
complete -c aigw -n '__aigw_at aigw quota reset' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw quota reset' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw quota reset' -s 'h' -l 'help' -d 'Show this message and exit.'

# aigw quota set
complete -c aigw -n '__aigw_at aigw quota set' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw quota set' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw quota set' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw quota set' -l 'period' -x -a 'hourly daily weekly monthly never' -d 'Quota period: hourly, daily, weekly, monthly or never (default: the tenant\'s current period).'
complete -c aigw -n '__aigw_at aigw quota set' -l 'usd' -d 'Set the tenant\'s money budget (US dollars per period, priced with `prices:`) instead of its token quota; either limit can refuse a request.'

# aigw quota show
complete -c aigw -n '__aigw_at aigw quota show' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw quota show' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw quota show' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw quota show' -l 'json' -d 'Print JSON for scripts.'

# aigw reload
complete -c aigw -n '__aigw_at aigw reload' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw reload' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw reload' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw reload' -l 'json' -d 'Print JSON for scripts.'

# aigw serve
complete -c aigw -n '__aigw_at aigw serve' -l 'access-log' -d 'Log one line per request.'
complete -c aigw -n '__aigw_at aigw serve' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw serve' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw serve' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw serve' -l 'host' -x -d 'Listen address (overrides server.host).'
complete -c aigw -n '__aigw_at aigw serve' -l 'log-level' -x -a 'debug info warning error' -d 'How much to log.'
complete -c aigw -n '__aigw_at aigw serve' -l 'loop' -x -a 'auto asyncio uvloop' -d 'Event loop: uvloop when installed (auto), or plain asyncio.'
complete -c aigw -n '__aigw_at aigw serve' -s 'p' -l 'port' -x -d 'Listen port (overrides server.port).'
complete -c aigw -n '__aigw_at aigw serve' -s 'w' -l 'workers' -x -d 'Worker processes sharing the port (SO_REUSEPORT); more than 1 needs state.backend: redis.'

# aigw status
complete -c aigw -n '__aigw_at aigw status' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw status' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw status' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw status' -l 'json' -d 'Print JSON for scripts.'

# aigw usage
complete -c aigw -n '__aigw_at aigw usage' -l 'admin-socket' -r -F -d 'Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config\'s, then the default).'
complete -c aigw -n '__aigw_at aigw usage' -l 'by' -x -a 'hour day tenant model' -d 'One line per hour, day, tenant or model (default: hour for up to 2 days, else day).'
complete -c aigw -n '__aigw_at aigw usage' -s 'c' -l 'config' -r -F -d 'Config file (default: $AIGW_CONFIG, then the user config).'
complete -c aigw -n '__aigw_at aigw usage' -l 'csv' -d 'Print CSV for spreadsheets.'
complete -c aigw -n '__aigw_at aigw usage' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw usage' -l 'json' -d 'Print JSON for scripts.'
complete -c aigw -n '__aigw_at aigw usage' -l 'model' -x -d 'Only this model.'
complete -c aigw -n '__aigw_at aigw usage' -l 'since' -x -d 'How far back: a number of minutes, hours, days or weeks (90m, 24h, 7d, 30d, 2w; at most 366d).'
complete -c aigw -n '__aigw_at aigw usage' -l 'tenant' -x -d 'Only this tenant.'

# aigw validate
complete -c aigw -n '__aigw_at aigw validate' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw validate' -l 'json' -d 'Print JSON for scripts.'
complete -c aigw -n '__aigw_at aigw validate' -l 'request' -r -F -d 'Also check this JSON request body with the daemon\'s validator.'
complete -c aigw -n '__aigw_at aigw validate' -F

# aigw version
complete -c aigw -n '__aigw_at aigw version' -s 'h' -l 'help' -d 'Show this message and exit.'
complete -c aigw -n '__aigw_at aigw version' -l 'json' -d 'Print JSON for scripts.'
