#!/usr/bin/env bash
# Creates what mxidp needs in an Auth0 tenant, through the Management API, from the JSON bodies
# next to this script (README.md, step 3):
#   1. the API whose identifier is mxidp's `audience` (api.json);
#   2. the post-login Action that puts the user's roles in a namespaced claim (action.json),
#      deployed and bound to the Login flow;
#   3. the Log Stream (custom webhook) to mxidp's webhook route (log-stream.json).
# The applications (mxidp's Regular Web Application, the machine-to-machine one) are created in
# the Dashboard (README.md, steps 1 and 2): their secrets are better handled there.
#
# Environment:
#   AUTH0_DOMAIN             https://acme.eu.auth0.com (the tenant's canonical domain)
#   AUTH0_MGMT_TOKEN         a Management API token allowed to create resource servers,
#                            actions and log streams
#   MXIDP_URL                mxidp's http.public_base, e.g. https://mxidp.example.org
#   API_AUDIENCE             the API identifier, e.g. https://matrix.example.org/api
#   ROLES_CLAIM              the namespaced claim, e.g. https://matrix.example.org/roles
#   LOG_STREAM_AUTHORIZATION the Authorization value the stream sends
#                            ([adapters.auth0] log_stream_authorization)
#
# Needs bash, curl and jq. Secrets never appear on a command line or in the output.
set -euo pipefail

: "${AUTH0_DOMAIN:?set AUTH0_DOMAIN}" "${AUTH0_MGMT_TOKEN:?set AUTH0_MGMT_TOKEN}"
: "${MXIDP_URL:?set MXIDP_URL}" "${API_AUDIENCE:?set API_AUDIENCE}"
: "${ROLES_CLAIM:?set ROLES_CLAIM}" "${LOG_STREAM_AUTHORIZATION:?set LOG_STREAM_AUTHORIZATION}"
tenant="${AUTH0_DOMAIN%/}"
mxidp="${MXIDP_URL%/}"
here="$(cd "$(dirname "$0")" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077
# The token goes to curl in a header file, not in its arguments (visible in `ps`).
printf 'Authorization: Bearer %s\n' "$AUTH0_MGMT_TOKEN" >"$work/auth"

# api METHOD PATH [BODY_FILE]: prints the answer; fails with Auth0's message on non-2xx.
api() {
  local method="$1" path="$2" body="${3:-}" status
  local args=(-sS -X "$method" -H @"$work/auth" -H 'Accept: application/json'
    -o "$work/answer" -w '%{http_code}' --max-time 30)
  if [[ -n "$body" ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary @"$body")
  fi
  status="$(curl "${args[@]}" "$tenant$path")"
  if [[ "$status" != 2* ]]; then
    echo "error: $method $path answered $status: $(jq -r '.message // .' "$work/answer" 2>/dev/null)" >&2
    return 1
  fi
  cat "$work/answer"
}

echo "1/3 creating the API $API_AUDIENCE"
jq --arg id "$API_AUDIENCE" '.identifier = $id' "$here/api.json" >"$work/api.json"
api POST /api/v2/resource-servers "$work/api.json" >/dev/null

echo "2/3 creating, deploying and binding the roles Action ($ROLES_CLAIM)"
jq --arg claim "$ROLES_CLAIM" '.code |= gsub("__ROLES_CLAIM__"; $claim)' \
  "$here/action.json" >"$work/action.json"
action_id="$(api POST /api/v2/actions/actions "$work/action.json" | jq -r '.id')"
api POST "/api/v2/actions/actions/$action_id/deploy" >/dev/null
jq -n --arg id "$action_id" \
  '{bindings: [{ref: {type: "action_id", value: $id}, display_name: "mxidp roles claim"}]}' \
  >"$work/bindings.json"
api PATCH /api/v2/actions/triggers/post-login/bindings "$work/bindings.json" >/dev/null

echo "3/3 creating the Log Stream to $mxidp/upstream/webhook"
jq --arg uri "$mxidp/upstream/webhook" \
  --rawfile authorization <(printf '%s' "$LOG_STREAM_AUTHORIZATION") \
  '.sink.httpEndpoint = $uri | .sink.httpAuthorization = $authorization' \
  "$here/log-stream.json" >"$work/stream.json"
stream_id="$(api POST /api/v2/log-streams "$work/stream.json" | jq -r '.id')"
echo "    log stream $stream_id"

cat <<EOF

Done. In mxidp's configuration:
[upstream]
provider = "auth0"
issuer = "$tenant/"
[adapters.auth0]
audience = "$API_AUDIENCE"
roles_claim = "$ROLES_CLAIM"
log_stream_authorization_file = "…"   # the value given as LOG_STREAM_AUTHORIZATION
EOF
