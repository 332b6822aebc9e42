#!/usr/bin/env bash
# Creates what mxidp needs in a ZITADEL organisation, through ZITADEL's APIs (README.md, step 2):
#   1. the project `Matrix` (roles asserted at sign-in) with the roles matrix-admin and
#      matrix-user;
#   2. the OIDC web app mxidp signs users in with (code flow, client_secret_basic, opaque
#      access tokens, back-channel logout to mxidp);
#   3. a service user with a personal access token and the Org User Manager role, for the user
#      API (reconciliation);
#   4. the Actions v2 target on mxidp's webhook, and executions on the events mxidp acts on.
#      Executions are instance-wide: this step needs an instance administrator (IAM_OWNER).
#
# Environment:
#   ZITADEL_URL         the instance, e.g. https://acme-xyz.zitadel.cloud
#   ZITADEL_TOKEN       a personal access token of an administrator (IAM_OWNER)
#   MXIDP_URL           mxidp's http.public_base, e.g. https://mxidp.example.org
#   SECRETS_DIR         where the client secret, the signing key and the service user's token
#                       are written (default ./zitadel-secrets)
#
# Needs bash, curl and jq. Secrets never appear on a command line or in the output.
set -euo pipefail

: "${ZITADEL_URL:?set ZITADEL_URL}" "${ZITADEL_TOKEN:?set ZITADEL_TOKEN}"
: "${MXIDP_URL:?set MXIDP_URL}"
zitadel="${ZITADEL_URL%/}"
mxidp="${MXIDP_URL%/}"
secrets="${SECRETS_DIR:-./zitadel-secrets}"

umask 077
mkdir -p "$secrets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The token goes to curl in a header file, not in its arguments (visible in `ps`).
printf 'Authorization: Bearer %s\n' "$ZITADEL_TOKEN" >"$work/auth"

# api METHOD PATH BODY: prints the answer; fails with ZITADEL's message on non-2xx.
api() {
  local method="$1" path="$2" body="$3" status
  printf '%s' "$body" >"$work/body"
  status="$(curl -sS -X "$method" -H @"$work/auth" -H 'Accept: application/json' \
    -H 'Content-Type: application/json' --data-binary @"$work/body" \
    -o "$work/answer" -w '%{http_code}' --max-time 30 "$zitadel$path")"
  if [[ "$status" != 2* ]]; then
    echo "error: $method $path answered $status: $(jq -r '.message // .' "$work/answer" 2>/dev/null)" >&2
    return 1
  fi
  cat "$work/answer"
}

echo "1/4 creating the project Matrix and its roles"
project="$(api POST /management/v1/projects \
  '{"name":"Matrix","projectRoleAssertion":true,"projectRoleCheck":false}' | jq -r '.id')"
api POST "/management/v1/projects/$project/roles/_bulk" \
  '{"roles":[{"key":"matrix-admin","displayName":"Matrix administrator"},{"key":"matrix-user","displayName":"Matrix user"}]}' >/dev/null
echo "    project $project"

echo "2/4 creating the OIDC app (redirect URI $mxidp/upstream/callback)"
app="$(api POST "/management/v1/projects/$project/apps/oidc" "$(jq -n --arg mxidp "$mxidp" '{
  name: "mxidp",
  redirectUris: [$mxidp + "/upstream/callback"],
  postLogoutRedirectUris: [],
  responseTypes: ["OIDC_RESPONSE_TYPE_CODE"],
  grantTypes: ["OIDC_GRANT_TYPE_AUTHORIZATION_CODE", "OIDC_GRANT_TYPE_REFRESH_TOKEN"],
  appType: "OIDC_APP_TYPE_WEB",
  authMethodType: "OIDC_AUTH_METHOD_TYPE_BASIC",
  version: "OIDC_VERSION_1_0",
  accessTokenType: "OIDC_TOKEN_TYPE_BEARER",
  backChannelLogoutUri: ($mxidp + "/upstream/backchannel-logout")
}')")"
client_id="$(jq -r '.clientId' <<<"$app")"
jq -r '.clientSecret' <<<"$app" >"$secrets/client_secret"
echo "    client_id = \"$client_id\""

echo "3/4 creating the service user mxidp-reader for the user API"
reader="$(api POST /management/v1/users/machine \
  '{"userName":"mxidp-reader","name":"mxidp user status","accessTokenType":"ACCESS_TOKEN_TYPE_BEARER"}' | jq -r '.userId')"
api POST /management/v1/orgs/me/members \
  "$(jq -n --arg user "$reader" '{userId: $user, roles: ["ORG_USER_MANAGER"]}')" >/dev/null
api POST "/management/v1/users/$reader/pats" '{}' | jq -r '.token' >"$secrets/service_user_token"

echo "4/4 creating the Actions v2 target ($mxidp/upstream/webhook) and its executions"
target="$(api POST /v2/actions/targets "$(jq -n --arg mxidp "$mxidp" '{
  name: "mxidp",
  restWebhook: {interruptOnError: false},
  endpoint: ($mxidp + "/upstream/webhook"),
  timeout: "10s"
}')")"
target_id="$(jq -r '.id' <<<"$target")"
jq -r '.signingKey' <<<"$target" >"$secrets/signing_key"
for event in user.deactivated user.reactivated user.locked user.unlocked user.removed \
  user.human.password.changed session.terminated; do
  api PUT /v2/actions/executions "$(jq -n --arg event "$event" --arg target "$target_id" \
    '{condition: {event: {event: $event}}, targets: [$target]}')" >/dev/null
  echo "    execution on $event"
done

cat <<CONFIG

Done. Secrets are in $secrets. In mxidp's configuration:
[upstream]
provider = "zitadel"
issuer = "$zitadel"
client_id = "$client_id"
client_secret_file = "$secrets/client_secret"
[adapters.zitadel]
project_id = "$project"
signing_key_file = "$secrets/signing_key"
service_user_token_file = "$secrets/service_user_token"
[policy]
admin = { claim = "roles", value = "matrix-admin" }
CONFIG
