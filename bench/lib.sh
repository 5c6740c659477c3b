# Shared by the bench scripts: a sipwarden configuration in $WORK with one
# `freeswitch` jail following $WORK/fs.log.
#   sw_config "maxretry = 3" '[firewall]\nbackend = "none"'
sw_config() {
  {
    printf '[daemon]\nstate_dir = "%s/state"\nsocket = "%s/sw.sock"\n' "$WORK" "$WORK"
    printf '[defaults]\nignoreself = false\n%b\n' "$1"
    printf '%b\n' "${2:-}"
    printf '[jail.freeswitch]\nfilter = "freeswitch"\nlogtimezone = "UTC"\nlogpath = "%s/fs.log"\n' "$WORK"
  } > "$WORK/sw.toml"
  : > "$WORK/fs.log"
}

# `burst = false` for a jail, when $BIN knows the key (builds before issue
# 22's burst rule refuse it). Workloads that send many failures per address
# without meaning to ban (W6, the wire sensor's cost) keep measuring intake
# on old and new builds alike; with the rule on, every address would be
# banned at its 3rd failure and its later events not counted.
sw_no_burst() {
  local t
  t=$(mktemp -d)
  : > "$t/x.log"
  printf '[daemon]\nstate_dir = "%s/state"\n[jail.x]\nfilter = "freeswitch"\nlogpath = "%s/x.log"\nburst = false\n' "$t" "$t" > "$t/sw.toml"
  if "$BIN" check --config "$t/sw.toml" >/dev/null 2>&1; then echo 'burst = false'; fi
  rm -rf "$t"
}
