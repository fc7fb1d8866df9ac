#!/usr/bin/env bash
# Smoke test for the test OpenID provider (tests/oidc/provider.mjs).
# Usage: bash tests/oidc/smoke.sh   (runs `npm ci` first if node_modules is missing)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMP="$(mktemp -d)"
PID=""

cleanup() {
  exec 3>&- 2>/dev/null || true
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "oidc smoke: FAIL: $*" >&2
  if [[ -f "$TMP/err" ]]; then
    echo "--- provider stderr ---" >&2
    cat "$TMP/err" >&2
  fi
  exit 1
}

if [[ ! -d "$HERE/node_modules/oidc-provider" ]]; then
  (cd "$HERE" && npm ci --no-audit --no-fund >&2)
fi

cat >"$TMP/config.json" <<'EOF'
{
  "port": 0,
  "audience": "scp-pep",
  "clients": [
    {
      "client_id": "smoke-client",
      "client_secret": "smoke-secret",
      "claims": {"tenant_id": "ke", "integration_id": "int-1", "verticals": ["health", "education"]}
    }
  ]
}
EOF

# The provider exits when its stdin closes; hold stdin open through a FIFO on fd 3.
mkfifo "$TMP/stdin"
node "$HERE/provider.mjs" "$TMP/config.json" <"$TMP/stdin" >"$TMP/out" 2>"$TMP/err" &
PID=$!
exec 3>"$TMP/stdin"

for _ in $(seq 1 100); do
  [[ -s "$TMP/out" ]] && break
  kill -0 "$PID" 2>/dev/null || fail "provider exited early"
  sleep 0.1
done
[[ -s "$TMP/out" ]] || fail "provider did not print its ready line"
[[ "$(wc -l <"$TMP/out")" -eq 1 ]] || fail "expected exactly one stdout line"
READY="$(cat "$TMP/out")"
echo "ready: $READY" >&2

# js EXPR: evaluate EXPR in node with `ready` = parsed ready line, `args` = extra args.
js() {
  local expr="$1"; shift
  READY="$READY" node -e '
    const ready = JSON.parse(process.env.READY);
    const args = process.argv.slice(1);
    const b64 = (s) => JSON.parse(Buffer.from(s, "base64url").toString("utf8"));
    const jwt = (t) => { const [h, p] = t.split("."); return { header: b64(h), payload: b64(p) }; };
    const out = ('"$expr"');
    if (out !== undefined) console.log(typeof out === "string" ? out : JSON.stringify(out));
  ' "$@"
}

ISSUER="$(js 'ready.issuer')"
TOKEN_URL="$(js 'ready.token_endpoint')"
JWKS_URL="$(js 'ready.jwks_uri')"
KID1="$(js 'ready.kid')"
[[ "$ISSUER" =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || fail "bad issuer $ISSUER"

DISCO="$(curl -fsS "$ISSUER/.well-known/openid-configuration")" || fail "discovery failed"
js '(() => { const d = JSON.parse(args[0]);
  if (d.issuer !== ready.issuer) throw new Error("issuer mismatch");
  if (d.jwks_uri !== ready.jwks_uri) throw new Error("jwks_uri mismatch");
  if (d.token_endpoint !== ready.token_endpoint) throw new Error("token_endpoint mismatch");
})()' "$DISCO" || fail "discovery does not match ready line"

get_token() { # extra curl args...
  local resp
  resp="$(curl -fsS -u smoke-client:smoke-secret -d grant_type=client_credentials "$@" "$TOKEN_URL")" \
    || fail "token request failed"
  js 'JSON.parse(args[0]).access_token' "$resp"
}

# check_token TOKEN EXPECTED_KID EXPECTED_SCOPE(or "") -> verifies header, claims, signature vs JWKS
check_token() {
  local jwks
  jwks="$(curl -fsS "$JWKS_URL")" || fail "jwks fetch failed"
  js '(() => {
    const crypto = require("node:crypto");
    const [tok, kid, scope, jwksText] = args;
    const { header, payload } = jwt(tok);
    const assert = (c, m) => { if (!c) throw new Error(m + ": " + JSON.stringify({ header, payload })); };
    assert(header.alg === "RS256", "alg not RS256");
    assert(header.kid === kid, "kid " + header.kid + " != " + kid);
    assert(payload.iss === ready.issuer, "iss");
    assert(payload.aud === "scp-pep", "aud");
    assert(payload.azp === "smoke-client" || payload.client_id === "smoke-client", "azp/client_id");
    assert(payload.tenant_id === "ke", "tenant_id");
    assert(payload.integration_id === "int-1", "integration_id");
    assert(Array.isArray(payload.verticals) && payload.verticals.join(",") === "health,education", "verticals");
    assert(Number.isInteger(payload.exp) && Number.isInteger(payload.iat) && payload.exp > payload.iat, "exp/iat");
    assert(typeof payload.jti === "string" && payload.jti.length > 0, "jti");
    if (scope) assert(payload.scope === scope, "scope");
    else assert(payload.scope === undefined, "unexpected scope");
    const jwk = JSON.parse(jwksText).keys.find((k) => k.kid === header.kid);
    assert(jwk, "kid not in JWKS");
    assert(jwk.d === undefined, "JWKS leaks private key");
    const [h, p, s] = tok.split(".");
    const ok = crypto.verify("RSA-SHA256", Buffer.from(h + "." + p), crypto.createPublicKey({ key: jwk, format: "jwk" }), Buffer.from(s, "base64url"));
    assert(ok, "signature does not verify");
  })()' "$1" "$2" "$3" "$jwks" || fail "token check failed"
}

jwks_kids() { curl -fsS "$JWKS_URL" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).keys.map(k=>k.kid).sort().join(" ")))'; }

# 1. plain client_credentials (basic auth), no scope
T1="$(get_token)"
check_token "$T1" "$KID1" ""

# 2. with scopes
T2="$(get_token --data-urlencode 'scope=health:read person:read')"
check_token "$T2" "$KID1" "health:read person:read"

# 3. client_secret_post also accepted
RESP="$(curl -fsS -d grant_type=client_credentials -d client_id=smoke-client -d client_secret=smoke-secret "$TOKEN_URL")" \
  || fail "client_secret_post token request failed"
check_token "$(js 'JSON.parse(args[0]).access_token' "$RESP")" "$KID1" ""

# 4. wrong secret rejected
CODE="$(curl -sS -o /dev/null -w '%{http_code}' -u smoke-client:nope -d grant_type=client_credentials "$TOKEN_URL")"
[[ "$CODE" == "401" ]] || fail "wrong secret gave HTTP $CODE, expected 401"

# 5. rotation
ROT="$(curl -fsS -X POST "$ISSUER/admin/rotate")" || fail "rotate failed"
KID2="$(js 'JSON.parse(args[0]).kid' "$ROT")"
[[ -n "$KID2" && "$KID2" != "$KID1" ]] || fail "rotate did not produce a new kid"
T3="$(get_token --data-urlencode 'scope=health:read')"
check_token "$T3" "$KID2" "health:read"
check_token "$T1" "$KID1" ""   # old token still verifies against published JWKS
EXPECTED="$(printf '%s\n%s\n' "$KID1" "$KID2" | sort | tr '\n' ' ' | sed 's/ $//')"
[[ "$(jwks_kids)" == "$EXPECTED" ]] || fail "JWKS kids $(jwks_kids) != $EXPECTED"
[[ "$(curl -fsS "$ISSUER/.well-known/openid-configuration" | js 'undefined' && echo ok)" == ok ]] || fail "discovery after rotate"

# 6. drop-old
curl -fsS -X POST "$ISSUER/admin/drop-old" >/dev/null || fail "drop-old failed"
[[ "$(jwks_kids)" == "$KID2" ]] || fail "JWKS after drop-old: $(jwks_kids)"
check_token "$(get_token)" "$KID2" ""

# 7. provider exits when its stdin closes
exec 3>&-
for _ in $(seq 1 50); do
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$PID" 2>/dev/null; then fail "provider still running after stdin closed"; fi
wait "$PID" 2>/dev/null || true
PID=""

echo "oidc smoke: ok"
