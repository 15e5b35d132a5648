#!/usr/bin/env bash
# Files that do not fit into one device call's carry (64 MiB with the ~52 MB tracked tree), brought over
# in several calls: each call carries a few of them, `put` keeps them in /root/stage (outside the repo
# copy, which is replaced every call; it lasts while the machine is held), `restore` puts everything
# kept so far back into this call's repo copy.
#   bash benchmarks/stage.sh put PATH...   keep these carried paths (files or folders, repo-relative)
#   bash benchmarks/stage.sh restore       copy every kept path back into the repo copy
#   bash benchmarks/stage.sh list          what is kept, with sizes
# E.g. the 22 MB MP-20 model as 6 MB shards: call 1 carries .cache/models/mp20_s6_6mb/shard_000.pt and
# index.json and runs `put` on them, call 2 the next shard, ...; the last call runs `restore` and then
# `dpcdvae reconstruct --ckpt .cache/models/mp20_s6_6mb ...`.
set -u
S=/root/stage
cmd="${1:-list}"; shift || true
case "$cmd" in
  put)
    [ $# -gt 0 ] || { echo "stage: put needs paths"; exit 2; }
    for p in "$@"; do
      [ -e "$p" ] || { echo "stage: $p is not in this call's repo copy (not carried?)"; exit 1; }
      mkdir -p "$S/$(dirname "$p")" && cp -r "$p" "$S/$(dirname "$p")/" && echo "stage: kept $p"
    done;;
  restore)
    [ -d "$S" ] || { echo "stage: nothing kept"; exit 1; }
    cp -r "$S"/. ./ && echo "stage: restored $(cd "$S" && find . -type f | wc -l) files";;
  list)
    [ -d "$S" ] && (cd "$S" && find . -type f -exec du -h {} +) || echo "stage: nothing kept";;
  *) echo "usage: stage.sh put PATH... | restore | list"; exit 2;;
esac
