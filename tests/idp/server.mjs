// A real OpenID Provider (panva/oidc-provider 9.x) for mxidp's end-to-end tests.
//
// Usage: node tests/idp/server.mjs <config.json | inline JSON>
//        (or MXIDP_TEST_IDP_CONFIG=<path> node tests/idp/server.mjs)
//
// Config:
// {
//   "port": 4010,                       // required
//   "issuer": "http://127.0.0.1:4010",  // default http://127.0.0.1:<port>
//   "clients": [{ "client_id", "client_secret", "redirect_uris", "token_endpoint_auth_method",
//                 "backchannel_logout_uri"?, "backchannel_logout_session_required"?,
//                 "post_logout_redirect_uris"?, ...any other client metadata }],
//   "accounts": { "alice": { "sub", "preferred_username", "name", "email", "email_verified",
//                            "groups": [...], "password"? }, ... },
//   "ttl"?: { "AccessToken": 3600, "RefreshToken": 86400, ... },   // seconds
//   "conformIdTokenClaims"?: false,     // false (default): profile/email claims also in the ID token
//   "jwks"?: { "keys": [...] },          // default: a fresh RS256 key generated at start
//   "rotateRefreshToken"?: true,         // default true (new refresh token on every refresh)
//   "extraClients"?: [ ...clients ],     // appended to "clients" (e.g. a client-credentials bot:
//                                        //   "grant_types": ["client_credentials"],
//                                        //   "response_types": [], "redirect_uris": [])
//   "resourceServers"?: { "<resource indicator>": { "scope": "a b", "accessTokenTTL"?: 600 } }
//                                        // RFC 8707 resource indicators: an access token
//                                        // requested with `resource=<indicator>` is an RFC 9068
//                                        // JWT (typ at+jwt, RS256) with that audience; the
//                                        // client_credentials grant is on for clients listing it
// }
//
// Headless login (no devInteractions, no JavaScript):
//   GET  /interaction/:uid          -> login prompt: a tiny HTML form (POST .../login, field `login`);
//                                      consent prompt: granted at once, 303 back to the provider.
//   POST /interaction/:uid/login    form `login=<account key or sub>` [`password=`]: finishes the
//                                      login AND grants every requested scope/claim (a Grant is
//                                      created), 303 back to the provider, which redirects to the
//                                      client's redirect_uri.
//   POST /interaction/:uid/abort    ends the interaction with error=access_denied.
// Test-only admin:
//   POST /test/logout?sub=<sub>     ends all of that account's sessions server-side: back-channel
//                                      logout to every client with a backchannel_logout_uri, grants
//                                      and tokens revoked. Answers {"sessions": n, "notified": [client ids]}.
//
// Refresh tokens: issued on every authorization-code exchange for clients allowed the
// refresh_token grant (default issueRefreshToken demands `offline_access`, which oidc-provider
// drops unless prompt=consent; we override it). Without offline_access the tokens expire with the
// IdP session, like Keycloak's non-offline refresh tokens: after a logout, refresh fails with
// invalid_grant.
//
// Prints `READY <issuer>` on stdout once listening.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

function loadConfig() {
  const arg = process.argv[2] ?? process.env.MXIDP_TEST_IDP_CONFIG;
  if (!arg) {
    console.error('usage: node server.mjs <config.json>  (or MXIDP_TEST_IDP_CONFIG=<path>)');
    process.exit(2);
  }
  const text = arg.trimStart().startsWith('{') ? arg : readFileSync(arg, 'utf8');
  return JSON.parse(text);
}

const config = loadConfig();
const port = Number(config.port);
if (!Number.isInteger(port) || port <= 0) {
  console.error('config.port is required');
  process.exit(2);
}
const issuer = config.issuer ?? `http://127.0.0.1:${port}`;
const debug = !!process.env.MXIDP_TEST_IDP_DEBUG;

// ---- accounts ---------------------------------------------------------------------------------

const accountsByKey = new Map(Object.entries(config.accounts ?? {}));
const accountsBySub = new Map();
for (const [key, account] of accountsByKey) {
  account.sub ??= key;
  accountsBySub.set(account.sub, account);
}

function lookupLogin(login) {
  return accountsByKey.get(login) ?? accountsBySub.get(login);
}

const PROFILE_CLAIMS = [
  'name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
  'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at',
];

async function findAccount(_ctx, sub) {
  const account = accountsBySub.get(sub);
  if (!account) return undefined;
  return {
    accountId: sub,
    // oidc-provider filters by granted scopes/claims; return everything we know.
    async claims() {
      const { password: _password, ...claims } = account;
      return { ...claims, sub };
    },
  };
}

// ---- keys -------------------------------------------------------------------------------------

function generateJwks() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: `test-${randomUUID().slice(0, 8)}`, use: 'sig', alg: 'RS256' }] };
}

// ---- provider ---------------------------------------------------------------------------------

const resourceServers = config.resourceServers ?? {};

const clients = [...(config.clients ?? []), ...(config.extraClients ?? [])].map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  ...c,
}));

const provider = new Provider(issuer, {
  clients,
  jwks: config.jwks ?? generateJwks(),
  findAccount,
  claims: {
    openid: ['sub'],
    profile: PROFILE_CLAIMS,
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  conformIdTokenClaims: config.conformIdTokenClaims ?? false,
  cookies: { keys: [randomUUID()] },
  pkce: { required: () => true },
  // oidc-provider 9 refuses outgoing requests (back-channel logout, ...) to special-use addresses
  // such as 127.0.0.1 (SSRF protection via its own undici dispatcher). Tests live on loopback:
  // drop that dispatcher.
  fetch: (url, options) => {
    const { dispatcher: _ssrfGuard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  // Default true: every refresh returns a new refresh token and the old one becomes single-use
  // (reuse revokes the grant), like Okta/Auth0 rotation. Set "rotateRefreshToken": false for
  // Keycloak-like non-rotating refresh tokens.
  rotateRefreshToken: config.rotateRefreshToken ?? true,
  // Refresh tokens without offline_access/consent (see header comment).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    backchannelLogout: { enabled: true },
    clientCredentials: { enabled: true },
    // Only with configured resource servers: without them, access tokens stay opaque as before.
    resourceIndicators: {
      enabled: Object.keys(resourceServers).length > 0,
      defaultResource: async () => undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        const server = resourceServers[resource];
        if (!server) throw new errors.InvalidTarget();
        return {
          scope: server.scope,
          audience: resource,
          accessTokenTTL: server.accessTokenTTL ?? 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
    rpInitiatedLogout: {
      enabled: true,
      // Keep the default confirmation form (hidden `xsrf`, button `logout=yes`); only drop the
      // external font import so nothing is fetched by a real browser.
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><title>Logout</title></head><body>
${form}
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>
</body></html>`;
      },
    },
  },
  interactions: {
    url: async (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 600,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    ...(config.ttl ?? {}),
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body><h1>error</h1>${Object.entries(out)
      .map(([k, v]) => `<pre>${escapeHtml(k)}: ${escapeHtml(String(v))}</pre>`)
      .join('')}</body></html>`;
  },
});

// Sessions per account, for /test/logout.
const sessionsByAccount = new Map();
provider.on('session.saved', (session) => {
  if (!session.accountId) return;
  let set = sessionsByAccount.get(session.accountId);
  if (!set) sessionsByAccount.set(session.accountId, (set = new Set()));
  set.add(session.jti);
});
provider.on('session.destroyed', (session) => {
  sessionsByAccount.get(session.accountId)?.delete(session.jti);
});

for (const event of ['server_error', 'backchannel.error', 'grant.error', 'introspection.error',
  'revocation.error', 'end_session.error', 'userinfo.error', 'authorization.error']) {
  provider.on(event, (...args) => {
    const err = args.find((a) => a instanceof Error);
    console.error(`[idp] ${event}: ${err ? `${err.message}${err.error_description ? ` (${err.error_description})` : ''}` : ''}`);
  });
}
provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
  console.error(`[idp] backchannel logout sent to ${client.clientId} (sub ${accountId}, sid ${sid})`);
});

// ---- helpers ----------------------------------------------------------------------------------

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

function loginPage(uid, clientId, error) {
  return `<!DOCTYPE html><html><head><title>Sign in</title></head><body>
<h1>Sign in to ${escapeHtml(clientId)}</h1>
${error ? `<p class="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<input type="text" name="login" autofocus>
<input type="password" name="password">
<button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${escapeHtml(uid)}/abort"><button type="submit">Cancel</button></form>
</body></html>`;
}

// Grants everything the authorization request asks for (scopes, claims, resource scopes).
async function grantAll(details, accountId) {
  const { params } = details;
  const existingId = details.grantId;
  let grant = existingId ? await provider.Grant.find(existingId) : undefined;
  grant ??= new provider.Grant({ accountId, clientId: params.client_id });

  if (params.scope) grant.addOIDCScope(params.scope);
  const promptDetails = details.prompt?.details ?? {};
  if (promptDetails.missingOIDCScope) grant.addOIDCScope(promptDetails.missingOIDCScope.join(' '));
  if (promptDetails.missingOIDCClaims) grant.addOIDCClaims(promptDetails.missingOIDCClaims);
  if (promptDetails.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(promptDetails.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  if (params.claims) {
    try {
      const { userinfo, id_token: idToken } = JSON.parse(params.claims);
      grant.addOIDCClaims([...Object.keys(userinfo ?? {}), ...Object.keys(idToken ?? {})]);
    } catch {
      // invalid claims parameter is rejected by the provider before we get here
    }
  }
  return grant.save();
}

async function endAccountSessions(sub) {
  const notified = [];
  const sessionIds = [...(sessionsByAccount.get(sub) ?? [])];
  let count = 0;
  for (const id of sessionIds) {
    const session = await provider.Session.find(id);
    if (!session) continue;
    count += 1;
    for (const [clientId, { grantId }] of Object.entries(session.authorizations ?? {})) {
      let client;
      try {
        client = await provider.Client.find(clientId);
      } catch {
        client = undefined;
      }
      if (client?.backchannelLogoutUri) {
        try {
          await client.backchannelLogout(session.accountId, session.sidFor(clientId));
          notified.push(clientId);
          console.error(`[idp] backchannel logout sent to ${clientId} (sub ${sub}, admin)`);
        } catch (err) {
          console.error(`[idp] backchannel.error (admin) ${clientId}: ${err.message}`);
        }
      }
      if (grantId) {
        await Promise.all([
          provider.AccessToken.revokeByGrantId(grantId),
          provider.RefreshToken.revokeByGrantId(grantId),
          provider.AuthorizationCode.revokeByGrantId(grantId),
          provider.Grant.adapter.destroy(grantId),
        ]);
      }
    }
    await session.destroy();
  }
  sessionsByAccount.delete(sub);
  return { sessions: count, notified };
}

// ---- HTTP -------------------------------------------------------------------------------------

const providerCallback = provider.callback();

async function handle(req, res) {
  const url = new URL(req.url, issuer);
  const path = url.pathname;
  if (debug) console.error(`[idp] ${req.method} ${req.url}`);

  let m = path.match(/^\/interaction\/([^/]+)(?:\/(login|abort))?\/?$/);
  if (m) {
    const [, uid, action] = m;
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch (err) {
      return send(res, 400, 'text/plain', `interaction not found: ${err.message}`);
    }
    if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch');
    const { prompt, params, session } = details;

    if (!action && req.method === 'GET') {
      if (prompt.name === 'login') {
        return send(res, 200, 'text/html; charset=utf-8', loginPage(uid, params.client_id));
      }
      // consent (or any other prompt once logged in): grant everything at once.
      const accountId = session?.accountId;
      if (!accountId) return send(res, 400, 'text/plain', `unexpected prompt ${prompt.name}`);
      const grantId = await grantAll(details, accountId);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }

    if (action === 'login' && req.method === 'POST') {
      const form = await readForm(req);
      const account = lookupLogin(form.get('login') ?? '');
      if (!account || (account.password !== undefined && account.password !== form.get('password'))) {
        return send(res, 401, 'text/html; charset=utf-8', loginPage(uid, params.client_id, 'unknown user or wrong password'));
      }
      const accountId = account.sub;
      const grantId = await grantAll(details, accountId);
      return provider.interactionFinished(req, res, {
        login: { accountId, amr: ['pwd'], acr: '1' },
        consent: { grantId },
      }, { mergeWithLastSubmission: false });
    }

    if (action === 'abort' && req.method === 'POST') {
      return provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
    }
    return send(res, 405, 'text/plain', 'method not allowed');
  }

  if (path === '/test/logout' && req.method === 'POST') {
    const sub = url.searchParams.get('sub') ?? (await readForm(req)).get('sub');
    if (!sub) return send(res, 400, 'application/json', JSON.stringify({ error: 'sub required' }));
    const result = await endAccountSessions(sub);
    return send(res, 200, 'application/json', JSON.stringify(result));
  }

  if (path === '/test/health') return send(res, 200, 'text/plain', 'ok');

  return providerCallback(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(`[idp] handler error: ${err.stack ?? err}`);
    if (!res.headersSent) send(res, 500, 'text/plain', String(err.message ?? err));
    else res.end();
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
