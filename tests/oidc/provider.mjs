// Keycloak-like OpenID provider for scp-pep integration tests.
//
// Usage: node tests/oidc/provider.mjs CONFIG_JSON_PATH
//
// CONFIG_JSON:
//   {
//     "port": 0,                      // 0 = any free port on 127.0.0.1
//     "audience": "scp-pep",          // `aud` of every access token
//     "scopes": ["health:read", ...], // optional; scopes a client may request
//     "access_token_ttl": 300,        // optional; seconds
//     "clients": [{
//       "client_id": "...", "client_secret": "...",
//       "claims": {"tenant_id": "ke", "integration_id": "int-1", "verticals": ["health"]}
//     }]
//   }
//
// When ready, prints exactly one JSON line on stdout:
//   {"issuer":"http://127.0.0.1:PORT","jwks_uri":"...","token_endpoint":"...","kid":"..."}
// Everything else goes to stderr.
//
// Test helpers (loopback only, no auth):
//   POST /admin/rotate    -> new RSA key becomes the signing key, old keys stay
//                            published in the JWKS. Responds {"kid": "<new kid>"}.
//   POST /admin/drop-old  -> removes all but the current key from the JWKS.
//                            Responds {"kid": "<current kid>", "kids": [...]}.
//   GET  /admin/keys      -> {"kid": "<current kid>", "kids": [...]}

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { format } from 'node:util';

// oidc-provider prints notices with console.info (stdout). stdout is reserved
// for the single ready line, so route every console method to stderr.
for (const m of ['log', 'info', 'debug', 'warn', 'error']) {
  console[m] = (...args) => process.stderr.write(`${format(...args)}\n`);
}

const { default: Provider } = await import('oidc-provider');

const DEFAULT_SCOPES = [
  'openid',
  'profile',
  'email',
  'roles',
  'health:read',
  'health:write',
  'education:read',
  'education:write',
  'person:read',
  'person:write',
  'payments:read',
  'payments:write',
];

function die(msg) {
  process.stderr.write(`oidc test provider: ${msg}\n`);
  process.exit(2);
}

const configPath = process.argv[2];
if (!configPath) die('usage: node provider.mjs CONFIG_JSON_PATH');

let CONFIG;
try {
  CONFIG = JSON.parse(readFileSync(configPath, 'utf8'));
} catch (err) {
  die(`cannot read config ${configPath}: ${err.message}`);
}

const PORT = Number.isInteger(CONFIG.port) ? CONFIG.port : 0;
const AUDIENCE = CONFIG.audience;
if (typeof AUDIENCE !== 'string' || !AUDIENCE) die('config.audience must be a non-empty string');
const SCOPES = Array.isArray(CONFIG.scopes) ? CONFIG.scopes.map(String) : DEFAULT_SCOPES;
const TTL = Number.isInteger(CONFIG.access_token_ttl) && CONFIG.access_token_ttl > 0
  ? CONFIG.access_token_ttl
  : 300;
const CLIENTS = Array.isArray(CONFIG.clients) ? CONFIG.clients : [];
for (const c of CLIENTS) {
  if (typeof c.client_id !== 'string' || typeof c.client_secret !== 'string') {
    die('each client needs string client_id and client_secret');
  }
}
const CLAIMS_BY_CLIENT = new Map(CLIENTS.map((c) => [c.client_id, c.claims || {}]));

// Resource indicators must be absolute URIs; the audience (e.g. "scp-pep")
// usually is not, so map it to a URN. The JWT `aud` is the plain audience.
const RESOURCE = (() => {
  try {
    const u = new URL(AUDIENCE);
    if (!u.hash) return AUDIENCE;
  } catch { /* not a URL */ }
  return `urn:scp-pep:audience:${encodeURIComponent(AUDIENCE)}`;
})();

// Signing keys, newest first. Never written to disk.
let keys = [];

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    ...jwk,
    kid: `k-${randomUUID()}`,
    alg: 'RS256',
    use: 'sig',
  };
}

const cookieKeys = [randomBytes(32).toString('hex')];

function buildProvider(issuer) {
  const currentKid = keys[0].kid;
  const provider = new Provider(issuer, {
    clients: CLIENTS.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
    })),
    jwks: { keys: keys.map((k) => ({ ...k })) },
    cookies: { keys: cookieKeys },
    scopes: SCOPES,
    claims: { openid: ['sub'] },
    findAccount: async () => undefined,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE && resourceIndicator !== AUDIENCE) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: SCOPES.join(' '),
            audience: AUDIENCE,
            accessTokenTTL: TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256', kid: currentKid } },
          };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const clientId = token.clientId;
      const claims = CLAIMS_BY_CLIENT.get(clientId) || {};
      return { ...claims, azp: clientId };
    },
    ttl: {
      ClientCredentials: () => TTL,
      AccessToken: () => TTL,
    },
    enabledJWA: {
      authorizationSigningAlgValues: ['RS256'],
      idTokenSigningAlgValues: ['RS256'],
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`oidc server_error: ${err.stack || err}\n`);
  });
  provider.on('grant.error', (ctx, err) => {
    process.stderr.write(`oidc grant.error: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}\n`);
  });
  return provider;
}

let handler = null;

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

const server = createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (path.startsWith('/admin/')) {
    req.resume();
    if (req.method === 'POST' && path === '/admin/rotate') {
      keys = [newKey(), ...keys];
      handler = buildProvider(ISSUER).callback();
      process.stderr.write(`oidc: rotated, signing kid ${keys[0].kid}, ${keys.length} key(s) published\n`);
      return sendJson(res, 200, { kid: keys[0].kid });
    }
    if (req.method === 'POST' && path === '/admin/drop-old') {
      keys = [keys[0]];
      handler = buildProvider(ISSUER).callback();
      process.stderr.write(`oidc: dropped old keys, signing kid ${keys[0].kid}\n`);
      return sendJson(res, 200, { kid: keys[0].kid, kids: keys.map((k) => k.kid) });
    }
    if (req.method === 'GET' && path === '/admin/keys') {
      return sendJson(res, 200, { kid: keys[0].kid, kids: keys.map((k) => k.kid) });
    }
    return sendJson(res, 404, { error: 'not_found' });
  }
  if (!handler) return sendJson(res, 503, { error: 'not_ready' });
  return handler(req, res);
});

let ISSUER;

function shutdown(code = 0) {
  server.close();
  server.closeAllConnections?.();
  process.exit(code);
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
// A harness that dies closes our stdin: exit with it.
process.stdin.on('end', () => shutdown(0));
process.stdin.on('error', () => shutdown(0));
process.stdin.resume();

server.on('error', (err) => die(`listen failed: ${err.message}`));
server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  ISSUER = `http://127.0.0.1:${port}`;
  keys = [newKey()];
  handler = buildProvider(ISSUER).callback();
  const ready = {
    issuer: ISSUER,
    jwks_uri: `${ISSUER}/jwks`,
    token_endpoint: `${ISSUER}/token`,
    kid: keys[0].kid,
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
});
