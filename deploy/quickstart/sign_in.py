#!/usr/bin/env python3
"""Signs a user in to Matrix through mxidp the way a Matrix client does, with nothing but the
Python standard library, and proves the result with Synapse's whoami.

The OAuth 2.0 Matrix profile: discovery of mxidp's metadata, dynamic client registration
(MSC2966), authorization code with PKCE (S256) and a device scope, then the IdP's login form
and mxidp's consent page, answered like a person would, and the token exchange.

Usage: sign_in.py --mxidp URL --synapse URL --username U --password P
Prints `signed in as @user:server (device D)` and exits 0, or says which step failed and exits 1.
"""

import argparse
import base64
import hashlib
import html.parser
import http.cookiejar
import json
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request

# A loopback redirect (RFC 8252 §7.3): the code is read from the redirect itself, nothing listens.
REDIRECT_URI = "http://127.0.0.1/callback"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand: the last one carries the code to the client."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Forms(html.parser.HTMLParser):
    """The forms of a page: action, method and the values their inputs and buttons would send."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "method": (a.get("method") or "get").lower(),
                               "fields": {}, "buttons": []})
        elif self.forms and tag == "input" and a.get("name"):
            if a.get("type") in ("submit", "button"):
                self.forms[-1]["buttons"].append((a["name"], a.get("value", "")))
            else:
                self.forms[-1]["fields"][a["name"]] = a.get("value", "")
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1]["buttons"].append((a["name"], a.get("value", "")))


class Browser:
    def __init__(self):
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)

    def request(self, method, url, data=None, headers=None):
        body = None
        headers = dict(headers or {})
        if isinstance(data, dict):
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif isinstance(data, (bytes, str)):
            body = data.encode() if isinstance(data, str) else data
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            resp = self.opener.open(req, timeout=15)
        except urllib.error.HTTPError as e:
            resp = e
        return resp.status, resp.headers, resp.read().decode("utf-8", "replace")


def fail(step, detail):
    print(f"sign-in check failed at {step}: {detail}", file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mxidp", required=True)
    p.add_argument("--synapse", required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    b = Browser()

    status, _, body = b.request("GET", urllib.parse.urljoin(args.mxidp, ".well-known/openid-configuration"))
    if status != 200:
        fail("mxidp's metadata", f"HTTP {status}")
    meta = json.loads(body)

    registration = {
        "client_name": "mxidp quickstart check",
        "client_uri": "https://quickstart.example.org/",
        "redirect_uris": [REDIRECT_URI],
        "application_type": "native",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    status, _, body = b.request("POST", meta["registration_endpoint"], json.dumps(registration),
                                {"Content-Type": "application/json"})
    if status != 201:
        fail("client registration", f"HTTP {status}: {body[:300]}")
    client_id = json.loads(body)["client_id"]

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    device = "QUICK" + secrets.token_hex(4).upper()
    state = secrets.token_urlsafe(16)
    url = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
        "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{device}",
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
    })

    method, data = "GET", None
    for _ in range(30):
        status, headers, body = b.request(method, url, data)
        if status in (301, 302, 303, 307):
            url = urllib.parse.urljoin(url, headers["Location"])
            method, data = "GET", None
            if url.startswith(REDIRECT_URI):
                break
            continue
        if status != 200:
            fail("the sign-in pages", f"HTTP {status} at {url}: {body[:300]}")
        forms = Forms()
        forms.feed(body)
        login = next((f for f in forms.forms if "login" in f["fields"] or "username" in f["fields"]), None)
        if login:
            fields = dict(login["fields"])
            fields["login" if "login" in fields else "username"] = args.username
            if "password" in fields:
                fields["password"] = args.password
            form = login
        else:
            # mxidp's consent page: the button that allows.
            form = next((f for f in forms.forms if f["method"] == "post" and any(
                v.lower() in ("allow", "accept", "approve", "yes") for _, v in f["buttons"])), None)
            if form is None:
                fail("the sign-in pages", f"no login form or consent button at {url}")
            fields = dict(form["fields"])
            name, value = next((n, v) for n, v in form["buttons"]
                               if v.lower() in ("allow", "accept", "approve", "yes"))
            fields[name] = value
        url = urllib.parse.urljoin(url, form["action"] or url)
        method, data = "POST", fields
    else:
        fail("the sign-in pages", "too many steps")

    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(url).query))
    if query.get("state") != state or "code" not in query:
        fail("the authorization response", f"{query.get('error', 'no code')}: {query.get('error_description', '')}")
    status, _, body = b.request("POST", meta["token_endpoint"], {
        "grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT_URI,
        "client_id": client_id, "code_verifier": verifier,
    })
    if status != 200:
        fail("the token exchange", f"HTTP {status}: {body[:300]}")
    access = json.loads(body)["access_token"]

    status, _, body = b.request("GET", urllib.parse.urljoin(args.synapse, "_matrix/client/v3/account/whoami"),
                                headers={"Authorization": f"Bearer {access}"})
    if status != 200:
        fail("Synapse's whoami", f"HTTP {status}: {body[:300]}")
    me = json.loads(body)
    print(f"signed in as {me['user_id']} (device {me.get('device_id')})")


if __name__ == "__main__":
    main()
