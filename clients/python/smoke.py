"""The generated Python client against the real binary: register an integration, connect a
tenant (the OAuth authorization flow, and a connection registered with tokens obtained
elsewhere), get a token, proxy a call, read the refresh history.

Environment: TOKENVISOR_URL, TOKENVISOR_ADMIN_TOKEN, FAKE_PROVIDER (the fake's JSON line,
see crates/tokenvisor-testkit/examples/fake_provider.rs), CLIENT_DIR (where
openapi-python-client wrote the `tokenvisor_client` package).
"""

import json
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

sys.path.insert(0, os.environ["CLIENT_DIR"])

from tokenvisor_client import AuthenticatedClient  # noqa: E402
from tokenvisor_client.api.authorizations import create_authorization  # noqa: E402
from tokenvisor_client.api.connections import (  # noqa: E402
    create_connection,
    get_connection_history,
    list_connections,
    proxy_request,
    refresh_connection,
)
from tokenvisor_client.api.integrations import create_integration  # noqa: E402
from tokenvisor_client.api.tokens import get_token  # noqa: E402
from tokenvisor_client.api.webhooks import create_webhook_endpoint  # noqa: E402
from tokenvisor_client.models import (  # noqa: E402
    ConnectionView,
    CreateAuthorization,
    CreateConnection,
    CreateIntegration,
    CreateIntegrationSettingsType0,
    CreateWebhookEndpoint,
    ErrorBody,
    HistoryView,
    TokenAnswer,
)
from tokenvisor_client.types import File  # noqa: E402
from standardwebhooks import Webhook, WebhookVerificationError  # noqa: E402

fake = json.loads(os.environ["FAKE_PROVIDER"])
client = AuthenticatedClient(base_url=os.environ["TOKENVISOR_URL"], token=os.environ["TOKENVISOR_ADMIN_TOKEN"])
steps = 0


def step(name: str, ok: bool, detail: object = "") -> None:
    global steps
    if not ok:
        raise SystemExit(f"python smoke: FAILED at {name}: {detail}")
    steps += 1
    print(f"python smoke: ok {name}")


# A webhook receiver: every delivery (raw body and headers) lands in `deliveries`.
deliveries: queue.Queue = queue.Queue()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        deliveries.put((body, {key.lower(): value for key, value in self.headers.items()}))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()

with client as client:
    # A webhook endpoint for connection events; its secret is shown once.
    answer = create_webhook_endpoint.sync_detailed(
        client=client,
        body=CreateWebhookEndpoint(
            url=f"http://127.0.0.1:{receiver.server_address[1]}/hook", event_types=["refreshed"]
        ),
    )
    step("register webhook endpoint", answer.status_code == 201, answer.content)
    webhook_secret = answer.parsed.secret

    # Register an integration: the generic profile, the fake's endpoints, an API base.
    answer = create_integration.sync_detailed(
        client=client,
        body=CreateIntegration(
            name="python-smoke",
            provider="generic",
            client_id=fake["client_id"],
            client_secret=fake["client_secret"],
            scopes=["read"],
            token_url=fake["token_url"],
            authorize_url=fake["authorize_url"],
            revoke_url=fake["revoke_url"],
            settings=CreateIntegrationSettingsType0.from_dict({"api_base_url": fake["api_base_url"]}),
        ),
    )
    step("register integration", answer.status_code == 201, answer.content)
    integration = answer.parsed
    step("integration view", integration.name == "python-smoke" and integration.provider == "generic", integration)

    # A second registration under the same name is refused with a typed error.
    again = create_integration.sync_detailed(
        client=client,
        body=CreateIntegration(
            name="python-smoke", provider="generic", client_id="x", client_secret="y", token_url=fake["token_url"]
        ),
    )
    step(
        "duplicate name refused",
        again.status_code == 409 and isinstance(again.parsed, ErrorBody) and again.parsed.error.code == "conflict",
        again.content,
    )

    # Connect a tenant through the OAuth authorization flow: the fake approves at once and
    # redirects to tokenvisor's /oauth/callback, which exchanges the code.
    answer = create_authorization.sync_detailed(
        client=client, body=CreateAuthorization(tenant_id="py-tenant-oauth", integration="python-smoke")
    )
    step("start authorization", answer.status_code == 201, answer.content)
    page = httpx.get(answer.parsed.authorize_url, follow_redirects=True, timeout=30)
    step("authorization callback", page.status_code == 200 and "Connected" in page.text, page.text[:300])
    found = list_connections.sync(client=client, tenant_id="py-tenant-oauth")
    step("connected by OAuth", len(found.items) == 1 and found.items[0].integration == "python-smoke", found)

    # Register a connection with tokens obtained elsewhere.
    grant = fake["grants"]["python"]
    answer = create_connection.sync_detailed(
        client=client,
        body=CreateConnection(
            tenant_id="py-tenant",
            integration="python-smoke",
            access_token=grant["access_token"],
            refresh_token=grant["refresh_token"],
            expires_in=grant["expires_in"],
        ),
    )
    step("register connection", answer.status_code == 201 and isinstance(answer.parsed, ConnectionView), answer.content)
    connection = answer.parsed
    step("connection active", connection.status.value == "active" and connection.is_active, connection)

    # Get a token: the registered one, still valid.
    answer = get_token.sync_detailed(connection.id, client=client)
    step("get token", answer.status_code == 200 and isinstance(answer.parsed, TokenAnswer), answer.status_code)
    step("token is the registered one", answer.parsed.access_token == grant["access_token"])

    # Force a refresh; the next token is the provider's new one.
    answer = refresh_connection.sync_detailed(connection.id, client=client)
    step("refresh", answer.status_code == 200, answer.content)
    token = get_token.sync(connection.id, client=client)
    step("token after refresh", isinstance(token, TokenAnswer) and token.access_token != grant["access_token"])

    # Proxy a call: the fake's echo API sees the connection's grant and our body.
    answer = proxy_request.sync_detailed(
        str(connection.id), "things/42", client=client, body=File(payload=b"hello from python")
    )
    echoed = json.loads(answer.content) if answer.status_code == 200 else {}
    step("proxy call", answer.status_code == 200, answer.content)
    step(
        "proxied with the connection's token",
        echoed.get("family") == "python"
        and echoed.get("path") == "/api/echo/things/42"
        and echoed.get("body") == "hello from python",
        echoed,
    )

    # Read the history: the forced refresh, successful.
    history = get_connection_history.sync(connection.id, client=client, limit=10)
    step("history", isinstance(history, HistoryView) and len(history.items) >= 1, history)
    step(
        "history shows the forced refresh",
        any(item.reason == "forced" and item.outcome == "success" for item in history.items),
        history.items,
    )

    # The webhook for the forced refresh arrives signed: the Standard Webhooks library
    # verifies it with the endpoint's secret, and refuses a tampered body.
    try:
        body, headers = deliveries.get(timeout=30)
    except queue.Empty:
        body, headers = b"", {}
    step("webhook delivered", body != b"", "no delivery within 30 s")
    try:
        event = Webhook(webhook_secret).verify(body, headers)
    except WebhookVerificationError as error:
        event = {"error": str(error)}
    step("webhook verified", event.get("type") == "refreshed", event)
    try:
        Webhook(webhook_secret).verify(body.replace(b"refreshed", b"refr3shed"), headers)
        tampered = "accepted"
    except WebhookVerificationError:
        tampered = "refused"
    step("tampered webhook refused", tampered == "refused", tampered)

    # An unknown connection is a typed 404.
    answer = get_token.sync_detailed("00000000-0000-0000-0000-000000000000", client=client)
    step("unknown connection", answer.status_code == 404 and answer.parsed.error.code == "not_found", answer.content)

print(f"python smoke: {steps} passed, 0 failed")
