// The TypeScript client generated from the served document (openapi-typescript types,
// openapi-fetch calls) against the real binary: register an integration, connect a tenant,
// get a token, proxy a call, read the refresh history. Run by clients/run.sh.
// Environment: TOKENVISOR_URL, TOKENVISOR_ADMIN_TOKEN, FAKE_PROVIDER (the fake's JSON line).
import createClient from "openapi-fetch";
import type { paths } from "./generated/schema.js";

declare const process: { env: Record<string, string | undefined>; exit(code: number): never };

interface Fake {
  token_url: string;
  authorize_url: string;
  revoke_url: string;
  api_base_url: string;
  client_id: string;
  client_secret: string;
  grants: Record<string, { access_token: string; refresh_token: string; expires_in: number }>;
}

const fake: Fake = JSON.parse(process.env.FAKE_PROVIDER ?? "{}");
const client = createClient<paths>({
  baseUrl: process.env.TOKENVISOR_URL,
  headers: { Authorization: `Bearer ${process.env.TOKENVISOR_ADMIN_TOKEN}` },
});
let steps = 0;

function step(name: string, ok: boolean, detail?: unknown): asserts ok {
  if (!ok) {
    console.error(`typescript smoke: FAILED at ${name}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
  steps += 1;
  console.log(`typescript smoke: ok ${name}`);
}

// Register an integration: the generic profile, the fake's endpoints, an API base.
const integration = await client.POST("/v1/integrations", {
  body: {
    name: "typescript-smoke",
    provider: "generic",
    client_id: fake.client_id,
    client_secret: fake.client_secret,
    scopes: ["read"],
    token_url: fake.token_url,
    authorize_url: fake.authorize_url,
    revoke_url: fake.revoke_url,
    settings: { api_base_url: fake.api_base_url },
  },
});
step("register integration", integration.response.status === 201 && integration.data !== undefined, integration.error);
step("integration view", integration.data.name === "typescript-smoke", integration.data);

// A duplicate name is a typed error.
const duplicate = await client.POST("/v1/integrations", {
  body: { name: "typescript-smoke", provider: "generic", client_id: "x", client_secret: "y", token_url: fake.token_url },
});
step("duplicate name refused", duplicate.response.status === 409 && duplicate.error?.error.code === "conflict", duplicate.error);

// Connect a tenant through the OAuth authorization flow.
const authorization = await client.POST("/v1/authorizations", {
  body: { tenant_id: "ts-tenant-oauth", integration: "typescript-smoke" },
});
step("start authorization", authorization.response.status === 201 && authorization.data !== undefined, authorization.error);
const page = await fetch(authorization.data.authorize_url, { redirect: "follow" });
const text = await page.text();
step("authorization callback", page.status === 200 && text.includes("Connected"), text.slice(0, 300));
const found = await client.GET("/v1/connections", { params: { query: { tenant_id: "ts-tenant-oauth" } } });
step("connected by OAuth", found.data?.items.length === 1 && found.data.items[0].integration === "typescript-smoke", found.data);

// Register a connection with tokens obtained elsewhere.
const grant = fake.grants["typescript"];
const created = await client.POST("/v1/connections", {
  body: {
    tenant_id: "ts-tenant",
    integration: "typescript-smoke",
    access_token: grant.access_token,
    refresh_token: grant.refresh_token,
    expires_in: grant.expires_in,
  },
});
step("register connection", created.response.status === 201 && created.data !== undefined, created.error);
const connection = created.data;
step("connection active", connection.status === "active" && connection.is_active, connection);
const id = { params: { path: { id: connection.id } } };

// Get a token: the registered one, still valid.
const token = await client.GET("/v1/connections/{id}/token", id);
step("get token", token.data?.access_token === grant.access_token, token.error);

// Force a refresh; the next token is the provider's new one.
const refreshed = await client.POST("/v1/connections/{id}/refresh", id);
step("refresh", refreshed.response.status === 200, refreshed.error);
const fresh = await client.GET("/v1/connections/{id}/token", id);
step("token after refresh", fresh.data !== undefined && fresh.data.access_token !== grant.access_token, fresh.error);

// Proxy a call: the fake's echo API sees the connection's grant and the body.
const proxied = await client.POST("/v1/connections/{id}/proxy/{path}", {
  params: { path: { id: connection.id, path: "things/42" } },
  body: "hello from typescript" as unknown as string,
  bodySerializer: (body) => body as string,
  headers: { "Content-Type": "text/plain" },
  parseAs: "json",
});
const echoed = proxied.data as { family?: string; path?: string; body?: string } | undefined;
step("proxy call", proxied.response.status === 200, proxied.error);
step(
  "proxied with the connection's token",
  echoed?.family === "typescript" && echoed.path === "/api/echo/things/42" && echoed.body === "hello from typescript",
  echoed,
);

// Read the history: the forced refresh, successful.
const history = await client.GET("/v1/connections/{id}/history", {
  params: { path: { id: connection.id }, query: { limit: 10 } },
});
step(
  "history shows the forced refresh",
  history.data?.items.some((item) => item.reason === "forced" && item.outcome === "success") === true,
  history.data,
);

// An unknown connection is a typed 404.
const missing = await client.GET("/v1/connections/{id}/token", {
  params: { path: { id: "00000000-0000-0000-0000-000000000000" } },
});
step("unknown connection", missing.response.status === 404 && missing.error?.error.code === "not_found", missing.error);

console.log(`typescript smoke: ${steps} passed, 0 failed`);
