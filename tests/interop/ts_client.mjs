// The TypeScript SDK's client (@modelcontextprotocol/sdk, pinned in package-lock.json) with its
// OAuthClientProvider, run by test_typescript_sdk.py:
//
//   node ts_client.mjs '{"modules": DIR, "url": MCP_URL, "redirect": URI, "state": true|false}'
//
// When the SDK sends the user to sign in it prints {"authorize": URL} and reads from stdin the URL
// the browser was sent back to; then it lists the tools, calls `count` with progress and `report`,
// waits for its GET stream, ends the session with DELETE and prints {"result": {...}}: what it saw,
// every HTTP request it made and every error the SDK reported.
import path from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const cfg = JSON.parse(process.argv[2]);
const sdk = (p) =>
  import(pathToFileURL(path.join(cfg.modules, "@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { UnauthorizedError } = await sdk("client/auth.js");

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const requests = [];
const errors = [];
const loggedFetch = async (url, init) => {
  const r = await fetch(url, init);
  requests.push({
    method: init?.method ?? "GET",
    url: String(url),
    status: r.status,
    type: r.headers.get("content-type"),
  });
  return r;
};

let sentState = null;
const provider = {
  get redirectUrl() {
    return cfg.redirect;
  },
  get clientMetadata() {
    return {
      client_name: "typescript sdk interop",
      redirect_uris: [cfg.redirect],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  clientInformation() {
    return this.client;
  },
  saveClientInformation(info) {
    this.client = info;
  },
  tokens() {
    return this.saved;
  },
  saveTokens(tokens) {
    this.saved = tokens;
  },
  redirectToAuthorization(url) {
    this.authorizationUrl = url;
  },
  saveCodeVerifier(verifier) {
    this.verifier = verifier;
  },
  codeVerifier() {
    return this.verifier;
  },
};
if (cfg.state) {
  // the optional method: the SDK's own example provider has none (PKCE alone)
  provider.state = () => (sentState = crypto.randomUUID());
}

const client = new Client({ name: "typescript-sdk-interop", version: "1.0.0" });
client.onerror = (e) => errors.push(String(e));
const open = () =>
  new StreamableHTTPClientTransport(new URL(cfg.url), { authProvider: provider, fetch: loggedFetch });
let transport = open();
const result = { signIns: 0 };
try {
  await client.connect(transport);
} catch (e) {
  if (!(e instanceof UnauthorizedError)) throw e;
  result.signIns += 1;
  say({ authorize: String(provider.authorizationUrl) });
  const back = new URL((await input.next()).value);
  result.sentState = sentState;
  result.returnedState = back.searchParams.get("state");
  result.authorizeHadState = new URL(provider.authorizationUrl).searchParams.has("state");
  if (cfg.state && result.returnedState !== sentState) throw new Error("state mismatch");
  await transport.finishAuth(back.searchParams.get("code"));
  transport = open();
  transport.onerror = (e) => errors.push(String(e));
  await client.connect(transport);
}
result.errorsBeforeSignIn = errors.splice(0); // the 401 that started the sign-in
result.protocolVersion = transport.protocolVersion;
result.sessionId = transport.sessionId;
result.tools = (await client.listTools()).tools.map((t) => t.name);
const progress = [];
const counted = await client.callTool({ name: "count", arguments: { to: 3 } }, undefined, {
  onprogress: (p) => progress.push(p.progress),
});
result.counted = counted.content[0].text;
result.progress = progress;
const report = await client.callTool({ name: "report", arguments: { topic: "q3" } });
result.report = { isError: report.isError ?? false, text: report.content[0].text };
// the SDK opens its GET stream in the background after initialize
const isStream = (r) => r.method === "GET" && r.status === 200 && r.type?.startsWith("text/event-stream");
for (let waited = 0; !requests.some(isStream) && waited < 10000; waited += 50) await sleep(50);
const before = errors.length;
await transport.terminateSession();
result.sessionAfterDelete = transport.sessionId ?? null;
await sleep(300); // an error the server might send on the closing stream arrives by now
await client.close();
result.errorsAfterDelete = errors.slice(before);
result.errors = errors;
result.requests = requests;
say({ result });
process.exit(0);
