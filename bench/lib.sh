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
