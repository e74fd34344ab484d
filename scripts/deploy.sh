#!/usr/bin/env bash
# Deploys an admp image to DigitalOcean App Platform, waits until the hub
# answers /health, and rolls back to the previous deployment when it does not.
# The one deploy script of the project (.github/workflows/deploy.yml runs it;
# so can a person). See docs/DEPLOY.md.
#
#   scripts/deploy.sh <app-id> <image-tag>
#
# The app (created once from .do/app.yaml) runs the image
# registry.digitalocean.com/<registry>/admp:<tag>; image tags are immutable
# commit SHAs, so "the previous deployment" is an exact image.
#
# Steps:
#   1. remember the active deployment (the rollback target) and its spec;
#   2. set the service's image tag in the app spec and deploy it
#      (`doctl apps update --wait`), or redeploy (`doctl apps
#      create-deployment --wait`) when the tag is already the current one;
#   3. poll GET <app URL>/health until it answers 200 HEALTH_SUCCESSES times
#      in a row, or give up after HEALTH_TIMEOUT_SEC;
#   4. on failure, re-apply the previous deployment's spec (its image tag and
#      settings) with `doctl apps update --wait`, poll /health again, and exit
#      non-zero either way.
#
# Exit status: 0 deployed and healthy; 1 deploy failed and was rolled back;
# 2 deploy failed and the rollback failed too (act now); 64 usage error.
#
# Environment (all optional):
#   SERVICE              component name in the app spec (default: hub)
#   HEALTH_URL           URL to poll (default: the app's default ingress + /health)
#   HEALTH_TIMEOUT_SEC   give up polling after this long (default: 300)
#   HEALTH_INTERVAL_SEC  pause between polls (default: 5)
#   HEALTH_SUCCESSES     consecutive 200s required (default: 3)
#   DOCTL                doctl binary (default: doctl; must be authenticated)
set -euo pipefail

readonly SERVICE="${SERVICE:-hub}"
readonly HEALTH_TIMEOUT_SEC="${HEALTH_TIMEOUT_SEC:-300}"
readonly HEALTH_INTERVAL_SEC="${HEALTH_INTERVAL_SEC:-5}"
readonly HEALTH_SUCCESSES="${HEALTH_SUCCESSES:-3}"
readonly DOCTL="${DOCTL:-doctl}"

log() { printf '%s deploy: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }
die() { log "error: $1"; exit "${2:-1}"; }

usage() {
  # The header comment above, without its leading "# ".
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 64
}

[[ $# -eq 2 && -n "$1" && -n "$2" ]] || usage
readonly APP_ID="$1"
readonly IMAGE_TAG="$2"
[[ "$IMAGE_TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "not a valid image tag: $IMAGE_TAG" 64
for n in "$HEALTH_TIMEOUT_SEC" "$HEALTH_INTERVAL_SEC" "$HEALTH_SUCCESSES"; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || die "HEALTH_* settings must be positive integers" 64
done
for tool in "$DOCTL" jq curl; do
  command -v "$tool" >/dev/null || die "$tool is required" 64
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The app's active deployment: what we roll back to.
active_deployment() {
  "$DOCTL" apps get "$APP_ID" --format ActiveDeployment.ID --no-header | tr -d '[:space:]'
}

# Polls the health URL until HEALTH_SUCCESSES consecutive 200s (success) or
# HEALTH_TIMEOUT_SEC elapse (failure). Bounded: never loops forever.
wait_healthy() {
  local url="$1" deadline streak=0 code
  deadline=$(( $(date +%s) + HEALTH_TIMEOUT_SEC ))
  log "polling $url (need $HEALTH_SUCCESSES consecutive 200s within ${HEALTH_TIMEOUT_SEC}s)"
  while (( $(date +%s) < deadline )); do
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$url" 2>/dev/null || true)"
    if [[ "$code" == 200 ]]; then
      streak=$(( streak + 1 ))
      if (( streak >= HEALTH_SUCCESSES )); then
        log "healthy: $url answered 200 $streak times in a row"
        return 0
      fi
    else
      streak=0
      log "not healthy yet: $url answered ${code:-nothing}"
    fi
    sleep "$HEALTH_INTERVAL_SEC"
  done
  log "timed out after ${HEALTH_TIMEOUT_SEC}s waiting for $url"
  return 1
}

# Deploys the spec in file $1 and waits for the deployment to finish.
apply_spec() {
  "$DOCTL" apps update "$APP_ID" --spec "$1" --wait --format ID --no-header >/dev/null
}

rollback() {
  local target="$1"
  if [[ -z "$target" ]]; then
    die "no previous deployment to roll back to; the app needs attention" 2
  fi
  log "rolling back to deployment $target (its spec and image tag)"
  if ! apply_spec "$work/previous.json"; then
    die "rollback deployment failed; the app needs attention" 2
  fi
  if ! wait_healthy "$health_url"; then
    die "rolled back, but $health_url is still not healthy; the app needs attention" 2
  fi
  die "deploy of $IMAGE_TAG failed; rolled back to deployment $target" 1
}

# 1. The rollback target and the spec to change.
previous="$(active_deployment || true)"
"$DOCTL" apps spec get "$APP_ID" --format json >"$work/current.json"
if [[ -n "$previous" ]]; then
  "$DOCTL" apps spec get "$APP_ID" --deployment "$previous" --format json >"$work/previous.json"
  log "active deployment before this deploy: $previous"
else
  log "the app has no active deployment: nothing to roll back to if this one fails"
fi
jq -e --arg svc "$SERVICE" '.services[]? | select(.name == $svc) | .image' \
  "$work/current.json" >/dev/null \
  || die "the app spec has no service \"$SERVICE\" deployed from an image (see .do/app.yaml)" 64

health_url="${HEALTH_URL:-}"
if [[ -z "$health_url" ]]; then
  ingress="$("$DOCTL" apps get "$APP_ID" --format DefaultIngress --no-header | tr -d '[:space:]')"
  [[ -n "$ingress" ]] || die "the app has no default ingress yet; set HEALTH_URL" 64
  health_url="${ingress%/}/health"
fi

# 2. Deploy.
current_tag="$(jq -r --arg svc "$SERVICE" '.services[] | select(.name == $svc) | .image.tag // ""' "$work/current.json")"
log "deploying image tag $IMAGE_TAG to app $APP_ID (service $SERVICE; was ${current_tag:-unset})"
deployed=true
if [[ "$current_tag" == "$IMAGE_TAG" ]]; then
  # Same spec: `apps update` would not start a deployment, so redeploy.
  "$DOCTL" apps create-deployment "$APP_ID" --wait --format ID --no-header >/dev/null || deployed=false
else
  jq --arg svc "$SERVICE" --arg tag "$IMAGE_TAG" \
    '(.services[] | select(.name == $svc) | .image.tag) = $tag' \
    "$work/current.json" >"$work/next.json"
  apply_spec "$work/next.json" || deployed=false
fi
now_active="$(active_deployment || true)"
if [[ "$deployed" != true || -z "$now_active" || "$now_active" == "$previous" ]]; then
  log "the new deployment did not become active (active: ${now_active:-none})"
  "$DOCTL" apps list-deployments "$APP_ID" --format ID,Phase,Cause,Created --no-header | head -n 3 >&2 || true
  rollback "$previous"
fi
log "deployment $now_active is active"

# 3. Health.
if ! wait_healthy "$health_url"; then
  rollback "$previous"
fi
log "deployed $IMAGE_TAG (deployment $now_active)"
