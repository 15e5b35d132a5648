#!/usr/bin/env bash
# Long GPU jobs that outlive one device call (10 minutes each): a job started here runs in its own
# process session, so it survives the end of the call, and goes on while the machine is held (the next
# call must come within the machine's idle release, ~30 s). State lives in /root/hold (outside the repo
# copy, which is replaced every call).
#   bash benchmarks/hold.sh start NAME CMD...   start CMD in the background (log /root/hold/NAME.log)
#   bash benchmarks/hold.sh wait NAME MAX_S     return when NAME has ended or after MAX_S seconds
#   bash benchmarks/hold.sh status              every job: running / rc, last log line
set -u
H=/root/hold; mkdir -p "$H"
cmd="${1:-status}"; shift || true
case "$cmd" in
  start)
    name="$1"; shift
    if [ -f "$H/$name.pid" ] && kill -0 "$(cat "$H/$name.pid")" 2>/dev/null; then
      echo "hold: $name is already running"; exit 1
    fi
    rm -f "$H/$name.rc"
    setsid bash -c 'cd "$1"; shift; name="$1"; shift; "$@" >"/root/hold/$name.log" 2>&1; echo $? >"/root/hold/$name.rc"' \
      _ "$PWD" "$name" "$@" </dev/null >/dev/null 2>&1 &
    echo $! >"$H/$name.pid"; echo "hold: started $name (pid $!)";;
  wait)
    name="$1"; max="${2:-540}"; t0=$(date +%s)
    while [ ! -f "$H/$name.rc" ] && [ $(( $(date +%s) - t0 )) -lt "$max" ]; do sleep 5; done
    if [ -f "$H/$name.rc" ]; then echo "hold: $name ended, rc $(cat "$H/$name.rc")"; else echo "hold: $name still running"; fi
    grep -v "Warning\|LeafSpec\|warnings.warn" "$H/$name.log" | tail -3;;
  status)
    for p in "$H"/*.pid; do
      [ -e "$p" ] || { echo "hold: no jobs"; break; }
      n=$(basename "$p" .pid)
      if [ -f "$H/$n.rc" ]; then s="rc $(cat "$H/$n.rc")"; else s=running; fi
      echo "$n: $s | $(tail -c 300 "$H/$n.log" 2>/dev/null | tr '\r\n' '  ' | tail -c 200)"
    done;;
  *) echo "usage: hold.sh start NAME CMD... | wait NAME MAX_S | status"; exit 2;;
esac
