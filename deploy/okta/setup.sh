#!/usr/bin/env bash
# Creates what mxidp needs in an Okta org, through Okta's management API, from the JSON bodies
# next to this script (README.md, step 2):
#   1. the OIDC web app mxidp signs users in with (app.json);
#   2. the `groups` claim on the custom authorization server (groups-claim.json);
#   3. the Event Hook to mxidp's webhook (event-hook.json), then its verification, which Okta
#      does by calling mxidp: mxidp must be running with the same hook secret.
#
# Environment:
#   OKTA_ORG_URL         https://acme.okta.com
#   OKTA_API_TOKEN       an API token of an admin allowed to create apps, claims and hooks
#   OKTA_AUTH_SERVER_ID  the custom authorization server (default: default)
#   MXIDP_URL            mxidp's http.public_base, e.g. https://mxidp.example.org
#   OKTA_HOOK_SECRET     the Event Hook secret ([adapters.okta] hook_secret)
#   CLIENT_SECRET_FILE   where the app's client secret is written (default ./okta_client_secret)
#
# Needs bash, curl and jq. Secrets never appear on a command line or in the output.
set -euo pipefail

: "${OKTA_ORG_URL:?set OKTA_ORG_URL}" "${OKTA_API_TOKEN:?set OKTA_API_TOKEN}"
: "${MXIDP_URL:?set MXIDP_URL}" "${OKTA_HOOK_SECRET:?set OKTA_HOOK_SECRET}"
auth_server="${OKTA_AUTH_SERVER_ID:-default}"
secret_file="${CLIENT_SECRET_FILE:-./okta_client_secret}"
org="${OKTA_ORG_URL%/}"
mxidp="${MXIDP_URL%/}"
here="$(cd "$(dirname "$0")" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077
# The token goes to curl in a header file, not in its arguments (visible in `ps`).
printf 'Authorization: SSWS %s\n' "$OKTA_API_TOKEN" >"$work/auth"

# api METHOD PATH [BODY_FILE]: prints the answer; fails with Okta's error summary on non-2xx.
api() {
  local method="$1" path="$2" body="${3:-}" status
  local args=(-sS -X "$method" -H @"$work/auth" -H 'Accept: application/json'
    -o "$work/answer" -w '%{http_code}' --max-time 30)
  if [[ -n "$body" ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary @"$body")
  fi
  status="$(curl "${args[@]}" "$org$path")"
  if [[ "$status" != 2* ]]; then
    echo "error: $method $path answered $status: $(jq -r '.errorSummary // .' "$work/answer" 2>/dev/null)" >&2
    return 1
  fi
  cat "$work/answer"
}

echo "1/3 creating the OIDC app (redirect URI $mxidp/upstream/callback)"
jq --arg redirect "$mxidp/upstream/callback" \
  '.settings.oauthClient.redirect_uris = [$redirect]' \
  "$here/app.json" >"$work/app.json"
app="$(api POST /api/v1/apps "$work/app.json")"
client_id="$(jq -r '.credentials.oauthClient.client_id' <<<"$app")"
jq -r '.credentials.oauthClient.client_secret' <<<"$app" >"$secret_file"
echo "    client_id = \"$client_id\"   (client secret written to $secret_file)"

echo "2/3 adding the groups claim to authorization server $auth_server"
api POST "/api/v1/authorizationServers/$auth_server/claims" "$here/groups-claim.json" >/dev/null

echo "3/3 creating and verifying the Event Hook ($mxidp/upstream/webhook)"
jq --arg uri "$mxidp/upstream/webhook" --rawfile secret <(printf '%s' "$OKTA_HOOK_SECRET") \
  '.channel.config.uri = $uri | .channel.config.authScheme.value = $secret' \
  "$here/event-hook.json" >"$work/hook.json"
hook_id="$(api POST /api/v1/eventHooks "$work/hook.json" | jq -r '.id')"
api POST "/api/v1/eventHooks/$hook_id/lifecycle/verify" >/dev/null
echo "    event hook $hook_id verified"

cat <<EOF

Done. In mxidp's configuration:
[upstream]
provider = "okta"
issuer = "$org/oauth2/$auth_server"
client_id = "$client_id"
client_secret_file = "$secret_file"
EOF
