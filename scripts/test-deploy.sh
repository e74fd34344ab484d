#!/usr/bin/env bash
# Tests scripts/deploy.sh without DigitalOcean: a fake `doctl` keeps the app's
# state in files, and a local HTTP server plays the deployed hub, answering
# /health with 200 or 503 depending on which image tag is "serving".
#
#   scripts/test-deploy.sh        (needs bash, jq, curl, python3)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in jq curl python3; do
  command -v "$tool" >/dev/null || { echo "test-deploy: $tool is required" >&2; exit 1; }
done

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

state="$work/state"
mkdir -p "$state/specs" "$work/bin"

# --- fake doctl ---------------------------------------------------------------
cat >"$work/bin/doctl" <<'EOF'
#!/usr/bin/env bash
# Fake doctl: just the calls scripts/deploy.sh makes, on files in $FAKE_STATE.
set -euo pipefail
s="$FAKE_STATE"
echo "doctl $*" >>"$s/calls"
arg_after() { local want="$1"; shift; while (( $# )); do [[ "$1" == "$want" ]] && { echo "$2"; return; }; shift; done; }
deploy() { # $1 = spec file; fails when its tag is listed in fail_tags
  local tag n id
  tag="$(jq -r '.services[0].image.tag' "$1")"
  [[ "$1" -ef "$s/spec.json" ]] || cp "$1" "$s/spec.json"
  if grep -qx "$tag" "$s/fail_tags" 2>/dev/null; then echo "Error: deployment failed" >&2; exit 1; fi
  n=$(( $(cat "$s/counter") + 1 )); echo "$n" >"$s/counter"
  id="dep-$n"
  cp "$1" "$s/specs/$id.json"
  echo "$id" >"$s/active"
  echo "$tag" >"$s/serving"
  echo "$id"
}
case "$1 $2" in
  "apps get")
    case "$(arg_after --format "$@")" in
      ActiveDeployment.ID) cat "$s/active" ;;
      DefaultIngress) cat "$s/ingress" ;;
    esac ;;
  "apps spec")
    dep="$(arg_after --deployment "$@")"
    if [[ -n "$dep" ]]; then cat "$s/specs/$dep.json"; else cat "$s/spec.json"; fi ;;
  "apps update") deploy "$(arg_after --spec "$@")" ;;
  "apps create-deployment") deploy "$s/spec.json" ;;
  "apps list-deployments") echo "$(cat "$s/active") ACTIVE" ;;
  *) echo "fake doctl: unexpected: $*" >&2; exit 3 ;;
esac
EOF
chmod +x "$work/bin/doctl"

# --- fake hub: /health is 503 while an unhealthy tag is serving -----------------
cat >"$work/hub.py" <<'EOF'
import http.server, os, sys
state = sys.argv[1]
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        serving = open(os.path.join(state, "serving")).read().strip()
        try:
            bad = open(os.path.join(state, "unhealthy_tags")).read().split()
        except FileNotFoundError:
            bad = []
        code = 503 if self.path != "/health" or serving in bad else 200
        self.send_response(code)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Health)
open(os.path.join(state, "port"), "w").write(str(server.server_address[1]))
server.serve_forever()
EOF
echo v0 >"$state/serving"
python3 "$work/hub.py" "$state" &
server_pid=$!
for _ in $(seq 1 50); do [[ -s "$state/port" ]] && break; sleep 0.1; done
[[ -s "$state/port" ]] || { echo "test-deploy: fake hub did not start" >&2; exit 1; }
echo "http://127.0.0.1:$(cat "$state/port")" >"$state/ingress"

# A fresh app whose active deployment runs `tag` ("" = never deployed).
reset_app() {
  local tag="$1"
  rm -f "$state/calls" "$state/fail_tags" "$state/unhealthy_tags" "$state/specs/"*
  echo 0 >"$state/counter"
  jq -n --arg tag "${tag:-unset}" \
    '{name: "admp", services: [{name: "hub", http_port: 8080,
      image: {registry_type: "DOCR", repository: "admp", tag: $tag}}]}' >"$state/spec.json"
  if [[ -n "$tag" ]]; then
    cp "$state/spec.json" "$state/specs/dep-0.json"
    echo dep-0 >"$state/active"
    echo "$tag" >"$state/serving"
  else
    : >"$state/active"
    echo none >"$state/serving"
  fi
}

serving_tag() { jq -r '.services[0].image.tag' "$state/spec.json"; }

failures=0
# expect <name> <wanted exit status> <wanted spec tag afterwards> -- deploy.sh args
expect() {
  local name="$1" want_status="$2" want_tag="$3" status=0
  shift 4
  PATH="$work/bin:$PATH" FAKE_STATE="$state" HEALTH_INTERVAL_SEC=1 HEALTH_TIMEOUT_SEC=4 \
    HEALTH_SUCCESSES=2 scripts/deploy.sh "$@" >"$work/out" 2>&1 || status=$?
  if [[ "$status" == "$want_status" && "$(serving_tag)" == "$want_tag" ]]; then
    echo "ok   $name"
  else
    echo "FAIL $name: exit $status (want $want_status), spec tag $(serving_tag) (want $want_tag)"
    sed 's/^/     | /' "$work/out"
    failures=$((failures + 1))
  fi
}

reset_app v1
expect "healthy deploy goes live" 0 v2 -- app-1 v2

reset_app v1
echo bad >"$state/unhealthy_tags"
expect "unhealthy deploy is rolled back and fails" 1 v1 -- app-1 bad
grep -q -- "--deployment dep-0" "$state/calls" || { echo "FAIL rollback did not use the previous deployment's spec"; failures=$((failures + 1)); }

reset_app v1
echo broken >"$state/fail_tags"
expect "failed deployment is rolled back and fails" 1 v1 -- app-1 broken

reset_app v1
printf 'bad\nv1\n' >"$state/unhealthy_tags"
expect "failed rollback exits 2" 2 v1 -- app-1 bad

reset_app ""
echo bad >"$state/unhealthy_tags"
expect "nothing to roll back to exits 2" 2 bad -- app-1 bad

reset_app v1
expect "redeploying the current tag works" 0 v1 -- app-1 v1
grep -q "apps create-deployment" "$state/calls" || { echo "FAIL same tag did not redeploy"; failures=$((failures + 1)); }

reset_app v1
expect "missing arguments are a usage error" 64 v1 -- app-1
expect "a bad tag is a usage error" 64 v1 -- app-1 'v2;rm -rf /'

if (( failures > 0 )); then
  echo "test-deploy: $failures failure(s)" >&2
  exit 1
fi
echo "test-deploy: all passed"
