# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, never run). Every command a script runs goes
# through `run` (or `query` for read-only cloud look-ups), so `--dry-run` prints exactly what
# would run, one shell-quoted command per line, and touches nothing.

DRY_RUN=${DRY_RUN:-0}
# Dry-run lines go to fd 3 (a copy of stdout), so they show even inside $(...).
exec 3>&1

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# Print the comment block at the top of the script (its usage), without the #SBATCH lines.
usage() {
  awk 'NR == 1 { next } /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

note() {
  echo "[$(basename "$0")] $*" >&2
}

# Quote one word for a shell, leaving plain words bare so the printed commands stay readable.
quote_word() {
  local word=$1
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# The words of a command as one shell line.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

# Run a command, or print it under --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@" >&3
    echo >&3
    return 0
  fi
  "$@"
}

# A read-only look-up whose output the script uses; under --dry-run it is printed and finds nothing.
query() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@" >&3
    echo >&3
    return 0
  fi
  "$@"
}

# Fail early when a tool is missing (not under --dry-run, which runs nothing).
need() {
  [[ $DRY_RUN == 1 ]] && return 0
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed; $2"
}
