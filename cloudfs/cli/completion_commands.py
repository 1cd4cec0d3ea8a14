"""`cloudfs completion bash`: a bash completion script generated from the argument parser.

The script is data (each command's subcommands, options, which options take a
value and what kind of value, and its positional arguments) plus one small
function that walks the words typed so far. It offers subcommands, options,
the choices of an option that has them, and file or directory names where a
path is wanted; nothing else runs while completing (no Python, no cloudfs).
"""

from __future__ import annotations

import argparse

SHELLS = ("bash",)

# What kind of value an option or positional wants, from its metavar, else its dest.
FILE_METAVARS = {"FILE"}
DIR_METAVARS = {"DIR", "MOUNTPOINT", "PATH", "TARGET", "SOURCE", "SOURCE|NAME", "MOUNT", "REPO"}
FILE_DESTS = {"password_file", "new_password_file", "ca_bundle", "config"}
DIR_DESTS = {"repo", "location", "mount", "cache_dir", "state_dir", "unit_dir"}


def register(subparsers) -> None:
    completion = subparsers.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for SHELL, generated from cloudfs' own argument "
                    "parser: subcommands, options, option choices, and file names where a path is "
                    "wanted. Load it with `source <(cloudfs completion bash)`, or install it once: "
                    "`cloudfs completion bash > /etc/bash_completion.d/cloudfs` (or "
                    "~/.local/share/bash-completion/completions/cloudfs).")
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash")
    completion.set_defaults(run=run_completion)


def run_completion(args) -> int:
    from cloudfs.cli import build_parser

    print(bash_script(build_parser()), end="")
    return 0


def value_kind(action: argparse.Action) -> str:
    """`words:a,b`, `file`, `dir` or `none` (nothing to offer: a number, a name)."""
    if action.choices:
        return "words:" + ",".join(map(str, action.choices))
    if action.metavar in FILE_METAVARS or action.dest in FILE_DESTS:
        return "file"
    if action.metavar in DIR_METAVARS or action.dest in DIR_DESTS:
        return "dir"
    return "none"


def bash_script(parser: argparse.ArgumentParser) -> str:
    from cloudfs.cli.parsertree import takes_value, tree

    prog = parser.prog
    cases = []
    for command in tree(parser).walk():
        options = [s for action in command.options for s in action.option_strings]
        valued = [f"{s}={value_kind(action)}" for action in command.options if takes_value(action)
                  for s in action.option_strings]
        positionals = [value_kind(action) + ("*" if action.nargs in ("*", "+") else "")
                       for action in command.positionals]
        cases.append(f"        {_quote(' '.join(command.path))}) "
                     f"subs={_quote(' '.join(sub.path[-1] for sub in command.subcommands))}; "
                     f"opts={_quote(' '.join(options))}; "
                     f"valued={_quote(' ' + ' '.join(valued) + ' ')}; "
                     f"args={_quote(' '.join(positionals))};;")
    function = f"_{prog.replace('-', '_')}"
    return (BASH_TEMPLATE.replace("@PROG@", prog).replace("@FUNCTION@", function)
            .replace("@CASES@", "\n".join(cases)))


def _quote(text: str) -> str:
    assert "'" not in text
    return f"'{text}'"


BASH_TEMPLATE = r"""# bash completion for @PROG@, generated from its argument parser by `@PROG@ completion bash`.
# Load it with: source <(@PROG@ completion bash)

@FUNCTION@_spec() {
    # $1: a command path ('' or 'key add'); sets subs, opts, valued (' --opt=kind ') and args
    case $1 in
@CASES@
        *) subs=''; opts=''; valued=' '; args='';;
    esac
}

@FUNCTION@_offer() {
    # $1: a kind (words:a,b | file | dir | none), $2: the word being completed
    local words
    case $1 in
        words:*) words=${1#words:}; mapfile -t COMPREPLY < <(compgen -W "${words//,/ }" -- "$2");;
        file) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$2");;
        dir) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$2");;
        *) COMPREPLY=();;
    esac
}

@FUNCTION@() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local path='' subs opts valued args word option='' kind i=1 count=0
    @FUNCTION@_spec ''
    while (( i < COMP_CWORD )); do
        word=${COMP_WORDS[i]}
        if [[ $word == -* ]]; then
            if [[ ${COMP_WORDS[i+1]} == '=' ]]; then
                (( i += 2 ))                        # --option=value
            elif [[ $valued == *" $word="* ]]; then
                (( i += 1 ))                        # --option value
            fi
        elif [[ -n $subs && " $subs " == *" $word "* ]]; then
            path=${path:+$path }$word
            @FUNCTION@_spec "$path"
            count=0
        else
            (( count += 1 ))
        fi
        (( i += 1 ))
    done
    if [[ $cur == '=' && $prev == -* ]]; then
        option=$prev; cur=''
    elif [[ $prev == '=' ]] && (( COMP_CWORD > 1 )); then
        option=${COMP_WORDS[COMP_CWORD-2]}
    elif [[ $prev == -* && $valued == *" $prev="* ]]; then
        option=$prev
    fi
    if [[ -n $option ]]; then
        kind=${valued#* "$option"=}
        [[ $kind == "$valued" ]] && kind=none
        @FUNCTION@_offer "${kind%% *}" "$cur"
    elif [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
    elif [[ -n $subs ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
    else
        local kinds=($args)
        kind=${kinds[count]:-}
        if [[ -z $kind && ${#kinds[@]} -gt 0 && ${kinds[-1]} == *'*' ]]; then
            kind=${kinds[-1]}
        fi
        @FUNCTION@_offer "${kind%'*'}" "$cur"
    fi
}

complete -F @FUNCTION@ @PROG@
"""
