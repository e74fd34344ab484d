#!/usr/bin/env bash
# Runs a built admp binary the way the Docker image does — as uid/gid 65532
# (distroless "nonroot"), with an empty environment, its working directory and
# SQLite file in a data directory owned by that user — and checks that it
# serves, that `admp healthcheck` (the image's HEALTHCHECK) passes, that the
# database file is created there, and that SIGTERM stops it with exit 0.
# A stand-in for the container test where no Docker engine runs.
#
#   sudo scripts/smoke-nonroot.sh [path/to/admp]    (default: target/debug/admp)
#
# Needs root (to switch user) and setpriv (util-linux).
set -euo pipefail

readonly UID_GID=65532
src_bin="${1:-target/debug/admp}"

[[ "$(id -u)" == 0 ]] || { echo "smoke-nonroot: run as root (it switches to uid $UID_GID)" >&2; exit 64; }
command -v setpriv >/dev/null || { echo "smoke-nonroot: setpriv (util-linux) is required" >&2; exit 64; }
[[ -x "$src_bin" ]] || { echo "smoke-nonroot: no binary at $src_bin (cargo build first)" >&2; exit 64; }

work="$(mktemp -d)"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The image's layout: the binary owned by root, /data owned by the user.
chmod 0755 "$work"
install -m 0755 "$src_bin" "$work/admp"
install -d -m 0750 -o "$UID_GID" -g "$UID_GID" "$work/data"
data="$work/data"

as_user() {
  setpriv --reuid="$UID_GID" --regid="$UID_GID" --clear-groups --inh-caps=-all \
    env -i PATH=/usr/bin:/bin HOME=/nonexistent "$@"
}

# SQLite when this build has it (the image's default), else the memory store.
if "$work/admp" serve --help | grep -q sqlite; then
  backend=(STORAGE_BACKEND=sqlite "DATABASE_URL=sqlite://$data/admp.db?mode=rwc")
else
  backend=(STORAGE_BACKEND=memory)
  echo "smoke-nonroot: this build has no SQLite backend; using memory" >&2
fi

(cd "$data" && as_user HOST=127.0.0.1 PORT=0 LOG_FORMAT=json "${backend[@]}" "$work/admp" serve \
  >"$work/log" 2>&1) &
pid=$!

# The hub logs its address once it listens (port 0: the OS picked one).
addr=""
for _ in $(seq 1 100); do
  addr="$(grep -o '"addr":"[^"]*"' "$work/log" | head -n 1 | cut -d'"' -f4 || true)"
  [[ -n "$addr" ]] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$addr" ]]; then
  echo "smoke-nonroot: the hub did not start:" >&2
  cat "$work/log" >&2
  exit 1
fi

fail() { echo "smoke-nonroot: FAIL: $*" >&2; cat "$work/log" >&2; exit 1; }

server_pid="$(pgrep -f "^$work/admp serve" | head -n 1 || true)"
[[ -n "$server_pid" ]] || fail "cannot find the hub process"
[[ "$(ps -o uid= -p "$server_pid" | tr -d ' ')" == "$UID_GID" ]] || fail "the hub does not run as uid $UID_GID"
as_user "$work/admp" healthcheck --url "http://$addr/health" >/dev/null || fail "admp healthcheck failed"
as_user "$work/admp" healthcheck --url "http://$addr/ready" >/dev/null || fail "/ready is not 200"
if [[ "${backend[0]}" == STORAGE_BACKEND=sqlite ]]; then
  [[ -s "$data/admp.db" ]] || fail "no database file in the data directory"
  [[ "$(stat -c %u "$data/admp.db")" == "$UID_GID" ]] || fail "the database file is not owned by $UID_GID"
fi

kill -TERM "$server_pid"
status=0
for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server_pid" 2>/dev/null && fail "the hub did not stop within 10 s of SIGTERM"
wait "$pid" || status=$?
[[ "$status" == 0 ]] || fail "the hub exited with $status after SIGTERM"

echo "smoke-nonroot: ok (uid $UID_GID, ${backend[0]}, $addr, healthcheck passed, clean SIGTERM exit)"
ls -ln "$data" >&2
