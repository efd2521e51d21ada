# shellcheck shell=bash
# Sourced by tuning/check and tuning/apply: how to read tuning/sysctl.conf and when a
# running value already satisfies a recommended one. Defines functions only.

# Prints `key<TAB>value<TAB>optional` for each setting in a sysctl.conf-format file;
# optional is 1 for a `-key = value` line (sysctl ignores failures to set it).
sysctl_entries() {
  local line key value optional
  local -a words
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*([#\;]|$) ]] && continue
    optional=0
    if [[ $line =~ ^[[:space:]]*- ]]; then
      optional=1
      line=${line#*-}
    fi
    read -r key <<<"${line%%=*}"
    # Multi-number values (`1024 65535`) come out single-space separated.
    read -r -a words <<<"${line#*=}"
    value="${words[*]}"
    printf '%s\t%s\t%s\n' "$key" "$value" "$optional"
  done <"$1"
}

# The running value of a sysctl key from /proc/sys, whitespace collapsed; empty (and
# status 1) when this kernel has no such key.
sysctl_current() {
  local path="/proc/sys/${1//.//}"
  local -a words
  [[ -r $path ]] || return 1
  read -r -a words <"$path" || [[ ${#words[@]} -gt 0 ]] || return 1
  echo "${words[*]}"
}

# Which way a key should go: at-least (bigger is better, per field), at-most (smaller is
# better), exact, or covers (a port range that contains the recommended one).
sysctl_rule() {
  case $1 in
  net.ipv4.tcp_tw_reuse) echo exact ;;
  net.ipv4.tcp_fin_timeout | net.ipv4.tcp_slow_start_after_idle | kernel.io_uring_disabled) echo at-most ;;
  net.ipv4.ip_local_port_range) echo covers ;;
  *) echo at-least ;;
  esac
}

# sysctl_meets KEY CURRENT RECOMMENDED: status 0 when CURRENT is as good as RECOMMENDED.
sysctl_meets() {
  local key=$1 current=$2 recommended=$3 i
  local -a c r
  read -r -a c <<<"$current"
  read -r -a r <<<"$recommended"
  ((${#c[@]} == ${#r[@]})) || return 1
  for i in "${!r[@]}"; do
    [[ ${c[i]} =~ ^[0-9]+$ && ${r[i]} =~ ^[0-9]+$ ]] || { [[ $current == "$recommended" ]]; return; }
  done
  case $(sysctl_rule "$key") in
  exact) [[ $current == "$recommended" ]] ;;
  at-most) ((c[0] <= r[0])) ;;
  covers) ((c[0] <= r[0] && c[1] >= r[1])) ;;
  at-least)
    for i in "${!r[@]}"; do
      ((c[i] >= r[i])) || return 1
    done
    ;;
  esac
}
