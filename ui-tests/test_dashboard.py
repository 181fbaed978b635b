"""The dashboard (/ui) in headless Chromium against the real binary, as an operator uses it.

One scenario, in steps that each pass or fail: sign in with the keyboard alone; find the one
needs-reauth tenant among 1,000 connections by filtering; open it; start re-authorization;
complete consent at the fake provider in another tab; see the status badge turn active
and the event listed without a reload; deactivate and activate with the confirmation dialog (dismissed once:
nothing changes); sign out and be refused. Every page is checked with axe-core (violations
of impact serious or critical fail) and photographed.

Environment (set by ui-tests/run.sh): TOKENVISOR_URL, TOKENVISOR_ADMIN_TOKEN,
FAKE_PROVIDER_FILE (the fake's JSON line, see
crates/tokenvisor-testkit/examples/fake_provider.rs), AXE_SCRIPT (axe.min.js),
UI_TESTS_SCREENSHOTS (where the screenshots go).
"""

import http.client
import json
import os
import sys
import time
import traceback
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["TOKENVISOR_URL"].rstrip("/")
ADMIN_TOKEN = os.environ["TOKENVISOR_ADMIN_TOKEN"]
with open(os.environ["FAKE_PROVIDER_FILE"], encoding="utf-8") as file:
    FAKE = json.loads(file.readline())
with open(os.environ["AXE_SCRIPT"], encoding="utf-8") as file:
    AXE = file.read()
SHOTS = os.environ["UI_TESTS_SCREENSHOTS"]
# Integrations the tenants are spread over, and the tenant whose grant gets revoked.
INTEGRATIONS = ["crm", "helpdesk"]
BROKEN = "tenant-0637"
WAIT = 10


class Failed(Exception):
    """A step's check did not hold."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


# ---------------------------------------------------------------------------------------
# The admin API (setup and cross-checks): one keep-alive connection per thread.


def api(method: str, path: str, body: object = None, conn: http.client.HTTPConnection | None = None):
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(BASE).netloc, timeout=30)
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}", "accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    conn.request(method, f"/v1{path}", body=payload, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    return response.status, (json.loads(data) if data else None)


def connection_status(connection_id: str) -> str:
    status, body = api("GET", f"/connections/{connection_id}")
    check(status == 200, f"GET connection: {status} {body}")
    return body["status"]


def create_connections() -> dict[str, str]:
    """Registers both integrations and a connection per grant of the fake; returns tenant -> id."""
    for name in INTEGRATIONS:
        status, body = api(
            "POST",
            "/integrations",
            {
                "name": name,
                "provider": "generic",
                "client_id": FAKE["client_id"],
                "client_secret": FAKE["client_secret"],
                "scopes": ["read"],
                "token_url": FAKE["token_url"],
                "authorize_url": FAKE["authorize_url"],
                "revoke_url": FAKE["revoke_url"],
            },
        )
        check(status == 201, f"register integration {name}: {status} {body}")
    tenants = sorted(FAKE["grants"])

    def register(chunk: list[tuple[int, str]]) -> list[tuple[str, str]]:
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(BASE).netloc, timeout=30)
        ids = []
        for index, tenant in chunk:
            grant = FAKE["grants"][tenant]
            status, body = api(
                "POST",
                "/connections",
                {
                    "tenant_id": tenant,
                    "integration": INTEGRATIONS[index % len(INTEGRATIONS)],
                    "access_token": grant["access_token"],
                    "refresh_token": grant["refresh_token"],
                    "expires_in": grant["expires_in"],
                },
                conn,
            )
            check(status == 201, f"register connection {tenant}: {status} {body}")
            ids.append((tenant, body["id"]))
        conn.close()
        return ids

    numbered = list(enumerate(tenants))
    chunks = [numbered[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        return dict(pair for ids in pool.map(register, chunks) for pair in ids)


def break_tenant(connection_id: str) -> None:
    """Revokes the tenant's grant at the fake (RFC 7009) and forces a refresh: needs_reauth."""
    grant = FAKE["grants"][BROKEN]
    form = urllib.parse.urlencode({"token": grant["refresh_token"], "token_type_hint": "refresh_token"})
    fake = urllib.parse.urlsplit(FAKE["revoke_url"])
    conn = http.client.HTTPConnection(fake.netloc, timeout=10)
    conn.request("POST", fake.path, body=form, headers={"content-type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    conn.close()
    check(response.status == 200, f"revocation at the fake: {response.status}")
    status, body = api("POST", f"/connections/{connection_id}/refresh")
    check(status >= 400 and body["error"]["code"] == "needs_reauth", f"forced refresh: {status} {body}")
    check(connection_status(connection_id) == "needs_reauth", "the tenant is not needs_reauth")


# ---------------------------------------------------------------------------------------
# The browser.


def start_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,800", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(argument)
    # The browser's console (CSP violations, failed loads) is read by the /docs step.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    # The viewport (what the screenshots show) is 1280x800, whatever the window's frame takes.
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(1280 + 1280 - inner[0], 800 + 800 - inner[1])
    return driver


def wait(driver: webdriver.Chrome, condition, what: str, timeout: float = WAIT):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException as error:
        raise Failed(f"timed out waiting for {what} (at {driver.current_url})") from error


def axe(driver: webdriver.Chrome, page: str) -> None:
    """Runs axe-core on the current page; violations of impact serious or critical fail."""
    driver.execute_script(AXE)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        "  .then(r => done({violations: r.violations, passes: r.passes.map(p => p.id)}), e => done({error: String(e)}));"
    )
    check("error" not in result, f"axe on {page}: {result.get('error')}")
    check(len(result["passes"]) > 10, f"axe on {page} checked only {len(result['passes'])} rules")
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    print(f"  axe {page}: {len(result['passes'])} rules passed, {len(result['violations'])} violated")
    for violation in result["violations"]:
        targets = [" ".join(node["target"]) for node in violation["nodes"]][:5]
        print(f"  axe {page}: {violation['impact']} {violation['id']}: {violation['help']} {targets}")
    check(not bad, f"axe on {page}: {len(bad)} serious or critical violation(s): {[v['id'] for v in bad]}")


def shot(driver: webdriver.Chrome, name: str) -> None:
    path = os.path.join(SHOTS, f"{name}.png")
    check(driver.save_screenshot(path), f"screenshot {path}")


def badge_text(driver: webdriver.Chrome) -> str:
    """The status badge's text, read in one go (the live status replaces the element)."""
    return driver.execute_script(
        "const badge = document.querySelector('#status .badge'); return badge ? badge.textContent : null;"
    )


def main() -> int:
    os.makedirs(SHOTS, exist_ok=True)
    for name in os.listdir(SHOTS):
        if name.endswith(".png"):
            os.remove(os.path.join(SHOTS, name))
    print(f"ui-tests: screenshots in {SHOTS}")
    try:
        started = time.monotonic()
        ids = create_connections()
        print(f"ui-tests: {len(ids)} connections registered in {time.monotonic() - started:.1f} s")
        broken_id = ids[BROKEN]
        break_tenant(broken_id)
        # A few successful refreshes for the overview's plot.
        for tenant in sorted(ids)[:12]:
            status, body = api("POST", f"/connections/{ids[tenant]}/refresh")
            check(status == 200, f"refresh {tenant}: {status} {body}")
        driver = start_browser()
    except Exception:  # noqa: BLE001 - the run still ends with its count
        print(f"ui-tests: FAILED setup: {traceback.format_exc()}")
        print("ui-tests: 0 passed, 1 failed")
        return 1
    state: dict[str, object] = {}

    def sign_in_page() -> None:
        driver.get(f"{BASE}/ui")
        wait(driver, ec.url_to_be(f"{BASE}/ui/sign-in"), "the redirect to the sign-in page")
        axe(driver, "sign-in")
        shot(driver, "sign-in")

    def wrong_token_refused() -> None:
        field = driver.find_element(By.ID, "token")
        field.send_keys("not-the-token", Keys.ENTER)
        alert = wait(driver, ec.visibility_of_element_located((By.CSS_SELECTOR, "[role=alert]")), "the error")
        check("token" in alert.text.lower(), f"error text: {alert.text!r}")
        check(not driver.get_cookies(), f"a cookie after a wrong token: {driver.get_cookies()}")
        axe(driver, "sign-in with an error")

    def sign_in_with_keyboard_only() -> None:
        driver.get(f"{BASE}/ui/sign-in")
        wait(driver, ec.presence_of_element_located((By.ID, "token")), "the token field")
        keys = webdriver.ActionChains(driver)
        # From wherever focus starts, Tab reaches the token field (within a few presses).
        for _ in range(8):
            if driver.switch_to.active_element.get_attribute("id") == "token":
                break
            keys.send_keys(Keys.TAB).perform()
        check(driver.switch_to.active_element.get_attribute("id") == "token", "Tab never reached the token field")
        keys.send_keys(ADMIN_TOKEN).perform()
        keys.send_keys(Keys.TAB).perform()
        focused = driver.switch_to.active_element
        check(focused.tag_name == "button" and focused.text == "Sign in", f"Tab from the field went to {focused.text!r}")
        outline = driver.execute_script("return getComputedStyle(document.activeElement).outlineStyle;")
        keys.send_keys(Keys.ENTER).perform()
        wait(driver, ec.url_to_be(f"{BASE}/ui"), "the overview after signing in")
        check(outline not in ("none", ""), f"the focused button showed no focus outline ({outline!r})")

    def overview() -> None:
        wait(driver, ec.title_contains("Overview"), "the overview")
        tile = driver.find_element(By.CSS_SELECTOR, ".tile.needs_reauth .count")
        check(tile.text == "1", f"needs-reauth total {tile.text!r}")
        active = driver.find_element(By.CSS_SELECTOR, ".tile.active .count")
        check(active.text == str(len(ids) - 1), f"active total {active.text!r}")
        axe(driver, "overview")
        shot(driver, "overview")

    def filter_finds_the_broken_tenant() -> None:
        driver.find_element(By.LINK_TEXT, "Connections").click()
        wait(driver, ec.title_contains("Connections"), "the connections page")
        rows = driver.find_elements(By.CSS_SELECTOR, "#connections tbody tr")
        check(len(rows) == 50, f"{len(rows)} rows unfiltered (a page is 50)")
        check(driver.find_elements(By.CSS_SELECTOR, "a[rel=next]"), "no link to the next page")
        # By tenant: the exact id finds its one connection.
        last = sorted(ids)[-1]
        driver.find_element(By.NAME, "tenant").send_keys(last, Keys.ENTER)
        wait(driver, ec.url_contains(f"tenant={last}"), "the page filtered by tenant")
        rows = driver.find_elements(By.CSS_SELECTOR, "#connections tbody tr")
        check(len(rows) == 1 and last in rows[0].text, f"by tenant: {[r.text for r in rows]}")
        driver.find_element(By.NAME, "tenant").clear()
        Select(driver.find_element(By.NAME, "status")).select_by_value("needs_reauth")
        driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait(driver, ec.url_contains("status=needs_reauth"), "the filtered page")
        rows = driver.find_elements(By.CSS_SELECTOR, "#connections tbody tr")
        check(len(rows) == 1, f"{len(rows)} rows for needs_reauth")
        check(BROKEN in rows[0].text and "needs reauth" in rows[0].text, f"row {rows[0].text!r}")
        axe(driver, "connections filtered")
        shot(driver, "connections-filtered")

    def open_the_connection() -> None:
        driver.find_element(By.LINK_TEXT, BROKEN).click()
        wait(driver, ec.url_to_be(f"{BASE}/ui/connections/{broken_id}"), "the connection page")
        check(badge_text(driver) == "needs reauth", f"badge {badge_text(driver)!r}")
        check("invalid_grant" in driver.find_element(By.TAG_NAME, "main").text, "the last error is not shown")
        axe(driver, "connection")

    def start_reauthorization() -> None:
        driver.find_element(By.XPATH, "//button[normalize-space()='Re-authorize']").click()
        link = wait(driver, ec.visibility_of_element_located((By.ID, "authorize-link")), "the authorization link")
        url = link.get_attribute("value")
        check(url.startswith(FAKE["authorize_url"]), f"link {url!r}")
        state["link"] = url
        copy = driver.find_element(By.XPATH, "//button[normalize-space()='Copy']")
        copy.click()
        wait(driver, lambda d: copy.text == "Copied", "the copy button to say Copied")
        axe(driver, "connection with the re-authorization link")
        shot(driver, "connection-reauthorize")

    def keyboard_reaches_every_control() -> None:
        # Tab visits every link, field and button in the page's order (from wherever focus
        # is: the sequence wraps around at the end of the page).
        controls = driver.execute_script(
            "return [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select')];"
        )
        keys = webdriver.ActionChains(driver)
        seen = []
        for _ in range(2 * len(controls) + 3):
            keys.send_keys(Keys.TAB).perform()
            focused = driver.switch_to.active_element
            if focused in controls:
                seen.append(controls.index(focused))
        missing = [c.text or c.get_attribute("aria-label") or c.tag_name for i, c in enumerate(controls) if i not in seen]
        check(not missing, f"not reachable with Tab: {missing}")
        start = seen.index(0)
        check(seen[start : start + len(controls)] == list(range(len(controls))), f"Tab order {seen}")

    def consent_turns_the_badge_active_without_reload() -> None:
        page = driver.current_window_handle
        # A marker that a reload would lose.
        driver.execute_script("window.__notReloaded = true;")
        driver.switch_to.new_window("tab")
        driver.get(state["link"])  # the fake consents and redirects to tokenvisor's callback
        wait(driver, ec.url_contains("/oauth/callback"), "the callback page")
        body = driver.find_element(By.TAG_NAME, "body").text
        check("error" not in body.lower(), f"callback page: {body!r}")
        driver.close()
        driver.switch_to.window(page)
        wait(driver, lambda d: badge_text(d) == "active", "the badge to turn active", timeout=15)
        live = driver.find_element(By.ID, "status").get_attribute("aria-live")
        check(live == "polite", f"the status is not announced to screen readers (aria-live={live!r})")
        # The actions follow the new status (Deactivate appears), still without a reload.
        wait(
            driver,
            lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Deactivate']"),
            "the actions of an active connection",
            timeout=10,
        )
        check(driver.execute_script("return window.__notReloaded === true;"), "the page was reloaded")
        check(connection_status(broken_id) == "active", "the API does not say active")
        # The page's event list shows the re-authorization as it happened.
        wait(
            driver,
            lambda d: "reauthorized" in d.find_element(By.ID, "live-events").text,
            "the re-authorization in the page's live events",
        )

    def confirm_action(label: str, accept: bool) -> None:
        driver.find_element(By.XPATH, f"//button[normalize-space()='{label}']").click()
        alert = wait(driver, ec.alert_is_present(), f"the confirmation of {label}")
        check(label.lower() in alert.text.lower(), f"confirmation text {alert.text!r}")
        if accept:
            alert.accept()
        else:
            alert.dismiss()

    def dismissed_deactivation_changes_nothing() -> None:
        # The actions are those of the status the page was rendered with: open it afresh.
        driver.get(f"{BASE}/ui/connections/{broken_id}")
        wait(driver, lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Deactivate']"), "Deactivate")
        before = driver.current_url
        # Records each submit event after the page's own handler saw it (bubbling to window).
        driver.execute_script(
            "window.__submits = [];"
            "window.addEventListener('submit', (event) => window.__submits.push(event.defaultPrevented));"
        )
        confirm_action("Deactivate", accept=False)
        submits = driver.execute_script("return window.__submits;")
        check(submits == [True], f"submit events (prevented?): {submits}")
        check(driver.current_url == before, f"moved to {driver.current_url}")
        check(connection_status(broken_id) == "active", "dismissing changed the connection")

    def deactivate_with_confirmation() -> None:
        confirm_action("Deactivate", accept=True)
        wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "Deactivated"), "the notice")
        check(badge_text(driver) == "disabled", f"badge {badge_text(driver)!r}")
        check(connection_status(broken_id) == "disabled", "the API does not say disabled")
        axe(driver, "connection deactivated")

    def activate_with_confirmation() -> None:
        confirm_action("Activate", accept=True)
        wait(driver, lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Deactivate']"), "Deactivate")
        check(connection_status(broken_id) == "active", "the API does not say active")
        wait(driver, lambda d: badge_text(d) == "active", "the badge to say active")

    def integrations() -> None:
        driver.find_element(By.LINK_TEXT, "Integrations").click()
        wait(driver, ec.title_contains("Integrations"), "the integrations page")
        text = driver.find_element(By.TAG_NAME, "main").text
        check(all(name in text for name in INTEGRATIONS), f"integrations page: {text!r}")
        check(FAKE["client_secret"] not in driver.page_source, "the client secret is on the page")
        axe(driver, "integrations")
        shot(driver, "integrations")

    def table_row_follows_events_without_reload() -> None:
        tenant = sorted(ids)[1]
        connection_id = ids[tenant]
        driver.get(f"{BASE}/ui/connections?q={tenant}")
        wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "table#connections[data-live-open]")),
             "the table's event stream to open")
        row_badge = (
            f"const b = document.querySelector('tr[data-connection=\"{connection_id}\"] td.status .badge');"
            "return b ? b.textContent : null;"
        )
        check(driver.execute_script(row_badge) == "active", f"row badge {driver.execute_script(row_badge)!r}")
        driver.execute_script("window.__notReloaded = true;")
        status, body = api("POST", f"/connections/{connection_id}/deactivate")
        check(status == 200, f"deactivate: {status} {body}")
        wait(driver, lambda d: d.execute_script(row_badge) == "disabled", "the row's badge to turn disabled")
        shot(driver, "connections-live")
        status, body = api("POST", f"/connections/{connection_id}/activate")
        check(status == 200, f"activate: {status} {body}")
        wait(driver, lambda d: d.execute_script(row_badge) == "active", "the row's badge to turn active again")
        check(driver.execute_script("return window.__notReloaded === true;"), "the table was reloaded")
        axe(driver, "connections live")

    def api_documentation() -> None:
        driver.get_log("browser")  # forget what earlier pages logged
        driver.get(f"{BASE}/docs")
        wait(
            driver,
            lambda d: any(
                "/v1/connections" in e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            ),
            "Swagger UI to show the operation /v1/connections",
        )
        check("tokenvisor admin API" in driver.find_element(By.CSS_SELECTOR, ".info .title").text, "the title")
        # Everything the page loaded came from tokenvisor; nothing was blocked or failed.
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
        foreign = [url for url in loaded if not url.startswith(BASE + "/")]
        check(not foreign, f"/docs loaded from elsewhere: {foreign}")
        check(any(url.endswith("/openapi.json") for url in loaded), f"the document was not fetched: {loaded}")
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        check(not errors, f"console errors on /docs: {errors}")
        print(f"  /docs loaded {len(loaded)} resources, all from {BASE}")
        shot(driver, "docs")
        driver.get(f"{BASE}/ui")

    def sign_out_and_be_refused() -> None:
        driver.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
        wait(driver, ec.url_to_be(f"{BASE}/ui/sign-in"), "the sign-in page after signing out")
        for path in ("/ui", f"/ui/connections/{broken_id}", "/ui/connections?status=needs_reauth"):
            driver.get(f"{BASE}{path}")
            wait(driver, ec.url_to_be(f"{BASE}/ui/sign-in"), f"{path} to redirect to sign-in")
        driver.get(f"{BASE}/ui/connections/{broken_id}/status")
        wait(driver, ec.url_to_be(f"{BASE}/ui/sign-in"), "the live status to redirect to sign-in")

    steps = [
        sign_in_page,
        wrong_token_refused,
        sign_in_with_keyboard_only,
        overview,
        filter_finds_the_broken_tenant,
        open_the_connection,
        start_reauthorization,
        keyboard_reaches_every_control,
        consent_turns_the_badge_active_without_reload,
        dismissed_deactivation_changes_nothing,
        deactivate_with_confirmation,
        activate_with_confirmation,
        integrations,
        table_row_follows_events_without_reload,
        api_documentation,
        sign_out_and_be_refused,
    ]
    passed = failed = 0
    try:
        for step in steps:
            begun = time.monotonic()
            try:
                step()
            except Exception as error:  # noqa: BLE001 - every failure is reported, the run goes on
                failed += 1
                detail = str(error) if isinstance(error, Failed) else traceback.format_exc()
                print(f"ui-tests: FAILED {step.__name__}: {detail}")
                try:
                    shot(driver, f"failed-{step.__name__}")
                except Exception:  # noqa: BLE001
                    pass
            else:
                passed += 1
                print(f"ui-tests: ok {step.__name__} ({time.monotonic() - begun:.1f} s)")
    finally:
        driver.quit()
    print(f"ui-tests: screenshots in {SHOTS}")
    print(f"ui-tests: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
