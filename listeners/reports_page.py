"""The reports page operators open in a browser: ``GET /reports``.

A browser cannot send ``Authorization: Bearer`` from its address bar, so
the page itself holds no data and needs no key: its script asks for an
admin key (or takes ``#key=...`` from the address, then removes it), keeps
it in the tab's session storage only, fetches the HTML report from the
admin API with it and shows it in place. ``?from=&to=&as_of=`` on the page
address are passed on. The report is the reconciler's own HTML (escaped,
script-free); the page's Content-Security-Policy allows scripts from this
origin only, so nothing in a report could run even if it tried.
"""

from __future__ import annotations

from aiohttp import web

PATH = "/reports"
ASSETS = "/reports/assets/{name}"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # The reconciler's report carries its stylesheet inline.
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

PAGE = """<!DOCTYPE html>
<html lang="en" data-state="loading">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>HNV reconciliation</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/reports/assets/page.css">
<script src="/reports/assets/page.js" defer></script>
</head>
<body>
<div id="haven-bar">
  <form id="haven-login" hidden>
    <label for="haven-key">Admin key</label>
    <input id="haven-key" type="password" autocomplete="off" required minlength="24">
    <button type="submit">Open report</button>
    <span id="haven-login-note" role="alert"></span>
  </form>
  <nav id="haven-actions" hidden>
    <button type="button" id="haven-refresh">Refresh</button>
    <button type="button" id="haven-csv">Download CSV</button>
    <button type="button" id="haven-json">Download JSON</button>
    <button type="button" id="haven-forget">Forget key</button>
  </nav>
  <p id="haven-status" role="status">Loading the report&hellip;</p>
</div>
<main id="haven-report"></main>
</body>
</html>
"""

STYLE = """
#haven-bar { font: 14px/1.4 system-ui, sans-serif; max-width: 1100px;
             margin: 0 auto; padding: 12px 24px; display: flex; gap: 12px;
             align-items: center; flex-wrap: wrap; border-bottom: 1px solid #dadce0; }
#haven-bar form, #haven-bar nav { display: flex; gap: 8px; align-items: center; }
#haven-bar [hidden] { display: none; }
#haven-status { margin: 0; color: #5f6368; }
#haven-login-note { color: #b3261e; }
html[data-state="error"] #haven-status { color: #b3261e; }
"""

SCRIPT = """"use strict";
(() => {
  const STORE = "haven.adminKey";
  const API = "/api/v1/admin/reports";
  const root = document.documentElement;
  const byId = (id) => document.getElementById(id);

  function takeKeyFromAddress() {
    const found = /(?:^#|&)key=([^&]+)/.exec(location.hash);
    if (found) {
      sessionStorage.setItem(STORE, decodeURIComponent(found[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function reportUrl(format) {
    const page = new URLSearchParams(location.search);
    const query = new URLSearchParams({ format });
    for (const name of ["from", "to", "as_of"]) {
      if (page.get(name)) query.set(name, page.get(name));
    }
    return `${API}?${query}`;
  }

  function setState(state, message) {
    root.dataset.state = state;
    byId("haven-status").textContent = message;
  }

  function askForKey(message) {
    sessionStorage.removeItem(STORE);
    byId("haven-login").hidden = false;
    byId("haven-actions").hidden = true;
    byId("haven-login-note").textContent = message;
    setState("login", "An admin key is needed to read the report.");
  }

  async function fetchReport(format) {
    const key = sessionStorage.getItem(STORE);
    if (!key) {
      askForKey("");
      return null;
    }
    const response = await fetch(reportUrl(format), {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
    });
    if (response.status === 401) {
      askForKey("That key was refused.");
      return null;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const reason = body && body.error ? body.error.message : response.statusText;
      setState("error", `The report failed (${response.status}): ${reason}`);
      return null;
    }
    return response;
  }

  async function show() {
    setState("loading", "Reconciling\\u2026");
    const response = await fetchReport("html");
    if (!response) return;
    const report = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const old of document.querySelectorAll("style[data-report]")) old.remove();
    for (const style of report.head.querySelectorAll("style")) {
      style.dataset.report = "";
      document.head.appendChild(style);
    }
    document.title = report.title;
    byId("haven-report").replaceChildren(...report.body.childNodes);
    byId("haven-login").hidden = true;
    byId("haven-actions").hidden = false;
    root.dataset.verdict = response.headers.get("Haven-Verdict") || "";
    setState("ready", `Reconciled at ${new Date().toLocaleString()}.`);
  }

  async function download(format) {
    const response = await fetchReport(format);
    if (!response) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = `haven-report.${format}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  function failed(error) {
    setState("error", `The report could not be loaded: ${error}`);
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeKeyFromAddress();
    byId("haven-login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(STORE, byId("haven-key").value.trim());
      byId("haven-key").value = "";
      show().catch(failed);
    });
    byId("haven-refresh").addEventListener("click", () => show().catch(failed));
    byId("haven-csv").addEventListener("click", () => download("csv").catch(failed));
    byId("haven-json").addEventListener("click", () => download("json").catch(failed));
    byId("haven-forget").addEventListener("click", () => askForKey(""));
    show().catch(failed);
  });
})();
"""

_ASSETS = {
    "page.js": (SCRIPT, "text/javascript"),
    "page.css": (STYLE, "text/css"),
}


def setup(app: web.Application) -> None:
    """Add the page and its script and stylesheet to ``app``."""
    app.router.add_get(PATH, page)
    app.router.add_get(ASSETS, asset)


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


async def page(request: web.Request) -> web.Response:
    """Serve the page; it holds no data and needs no key."""
    return web.Response(
        text=PAGE, content_type="text/html", charset="utf-8", headers=_headers()
    )


async def asset(request: web.Request) -> web.Response:
    """Serve the page's script or stylesheet; 404 for anything else."""
    found = _ASSETS.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    text, media_type = found
    return web.Response(
        text=text, content_type=media_type, charset="utf-8", headers=_headers()
    )
