// Drives headless Chromium against a running `sluice demo` and checks the dashboard end to end:
// every panel shows data from the live feed, a shadow plugin uploaded through the API shows,
// stopping an endpoint turns its card unhealthy and its breaker open, the page reconnects by
// itself after its socket drops, starting the endpoint again makes it usable, and a screenshot
// is saved. Run by tests/tests/e2e/dashboard.rs; prints one JSON line of findings, exits 1 on failure.
//
// Environment: SLUICE_ADMIN (http://host:port of the demo's admin API), SLUICE_SCREENSHOT (PNG
// path), SLUICE_SHADOW_WASM (a router component to upload as the shadow), SLUICE_CHROMIUM
// (default /usr/bin/chromium).

import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const admin = process.env.SLUICE_ADMIN;
const screenshot = process.env.SLUICE_SCREENSHOT;
const shadowWasm = process.env.SLUICE_SHADOW_WASM;
const executablePath = process.env.SLUICE_CHROMIUM || "/usr/bin/chromium";
if (!admin || !screenshot || !shadowWasm) {
  console.error("SLUICE_ADMIN, SLUICE_SCREENSHOT and SLUICE_SHADOW_WASM must be set");
  process.exit(2);
}

const PANELS = ["health", "efficiency", "endpoints", "breakers", "insights", "heatmap",
  "prediction", "groups", "plugins", "decisions"];

const findings = {};
const pageErrors = [];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Uploads (a Uint8Array body) go as application/wasm, the only type the API takes for them.
async function api(path, method = "GET", body = undefined) {
  const headers = body instanceof Uint8Array ? { "Content-Type": "application/wasm" } : {};
  const response = await fetch(`${admin}${path}`, { method, body, headers });
  check(response.ok, `${method} ${path}: HTTP ${response.status}`);
  return response.json();
}

async function main() {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    // A laptop screen.
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    page.on("console", (message) => {
      if (message.type() === "error") pageErrors.push(message.text());
    });
    await page.goto(`${admin}/`);
    await page.waitForSelector('#link[data-state="live"]', { timeout: 15000 });

    // Every panel fills with data from the feed.
    for (const panel of PANELS) {
      try {
        await page.waitForSelector(`[data-panel="${panel}"][data-state="ready"]`, { timeout: 30000 });
      } catch {
        const text = await page.locator(`[data-panel="${panel}"]`).innerText();
        throw new Error(`panel ${panel} shows no data: ${JSON.stringify(text)}`);
      }
    }
    const panels = await page.evaluate(() => {
      const q = (s) => document.querySelectorAll(s);
      const text = (s) => document.querySelector(s)?.textContent ?? "";
      const mean = document.querySelector('#prediction polyline[data-series="mean"]');
      return {
        score: Number(text("#health .score")),
        uptime: text("#health"),
        efficiency: text('[data-metric="connection-efficiency"]'),
        streamsPerConnection: text('[data-metric="streams-per-connection"]'),
        endpointCards: Array.from(q("[data-endpoint]"), (c) => ({
          id: c.dataset.endpoint, health: c.dataset.health, latency: c.querySelector('[data-metric="latency"]').textContent,
          limits: c.querySelector('[data-metric="limits"]').textContent,
        })),
        breakerRows: Array.from(q("#breakers tr[data-breaker]"), (r) => r.dataset.breaker),
        insights: q("#insights .insight").length,
        heatCells: q("#heatmap rect").length,
        litHeatCells: Array.from(q("#heatmap rect")).filter((r) => r.getAttribute("fill").startsWith("rgba")).length,
        forecastPoints: mean ? mean.getAttribute("points").trim().split(/\s+/).length : 0,
        band: document.querySelectorAll('#prediction polygon[data-series="band"]').length,
        groups: Array.from(q("#groups tr[data-group]"), (r) => r.dataset.group),
        slots: Array.from(q("#plugins tr[data-slot]"), (r) => r.dataset.slot),
        decisions: Array.from(q("#decisions tr[data-monitor]"), (r) => ({
          monitor: r.dataset.monitor, reason: r.lastElementChild.textContent,
        })),
      };
    });
    findings.panels = panels;
    check(panels.score >= 0 && panels.score <= 100, `health score ${panels.score}`);
    check(/uptime \d/.test(panels.uptime), "no uptime");
    check(/^\d+%$/.test(panels.efficiency), `connection efficiency ${panels.efficiency}`);
    check(Number(panels.streamsPerConnection) > 0, `streams per connection ${panels.streamsPerConnection}`);
    const listed = (await api("/api/v1/endpoints")).endpoints;
    const endpoints = listed.map((e) => e.id).sort();
    // Each card shows the endpoint's caps with the use against them (the demo sets them).
    for (const e of listed) {
      const card = panels.endpointCards.find((c) => c.id === e.id);
      const caps = [` / ${e.limits.max_connections} conn.`, ` / ${e.limits.max_streams} streams`];
      check(e.limits.max_connections !== null && card && caps.every((cap) => card.limits.includes(cap)),
        `endpoint ${e.id}'s card shows limits ${JSON.stringify(card?.limits)}, the API ${JSON.stringify(e.limits)}`);
    }
    check(JSON.stringify(panels.endpointCards.map((c) => c.id).sort()) === JSON.stringify(endpoints),
      `endpoint cards ${JSON.stringify(panels.endpointCards)} vs API ${endpoints}`);
    check(panels.endpointCards.every((c) => c.health === "healthy"), "an endpoint starts unhealthy");
    check(panels.endpointCards.some((c) => / ms$/.test(c.latency)), "no endpoint latency shown");
    for (const id of endpoints) {
      check(panels.breakerRows.includes(`endpoint/${id}`), `no breaker row for endpoint ${id}`);
    }
    check(panels.insights > 0, "no insight shown");
    check(panels.heatCells === 180, `heatmap has ${panels.heatCells} cells, expected 3 x 60`);
    check(panels.litHeatCells > 0, "heatmap has no samples");
    check(panels.forecastPoints >= 12 && panels.band === 1, "prediction chart lacks its line or band");
    check(JSON.stringify(panels.groups) === JSON.stringify(["realtime", "event", "state"]), `groups ${panels.groups}`);
    check(panels.slots.length === 4, `plugin slots ${panels.slots}`);
    check(panels.decisions.length > 0 && panels.decisions.every((d) => d.reason.trim().length > 0),
      "routing decisions without reasons");

    // Plugins: the demo's router is active; a shadow uploaded through the API shows beside it.
    const router = '#plugins tr[data-slot="router"]';
    const active = await page.locator(`${router} [data-role="active"]`).textContent();
    check(/router v1 /.test(active), `active router plugin shows ${JSON.stringify(active)}`);
    const uploaded = await api("/api/v1/plugins/router?shadow=true&name=pick-first", "POST", await readFile(shadowWasm));
    check(uploaded.shadow === true, `upload answered ${JSON.stringify(uploaded)}`);
    await page.waitForFunction((selector) => /pick-first v\d+ .*agreement/.test(
      document.querySelector(selector)?.textContent ?? ""), `${router} [data-role="shadow"]`, { timeout: 10000 });
    findings.plugins = await page.locator(router).innerText();

    // Kill an endpoint: its card turns unhealthy and its breaker opens within seconds.
    const killedAt = Date.now();
    await api("/api/v1/demo/endpoints/slow/stop", "POST");
    await page.waitForSelector('[data-endpoint="slow"][data-health="unhealthy"]', { timeout: 10000 });
    findings.unhealthyAfterMs = Date.now() - killedAt;
    try {
      await page.waitForSelector('#breakers tr[data-breaker="endpoint/slow"][data-state="open"]', { timeout: 10000 });
    } catch (error) {
      const events = (await api("/api/v1/breakers/events")).events.filter((e) => e.name === "slow");
      throw new Error(`${error.message}; breaker events of slow: ${JSON.stringify(events)}`);
    }
    findings.breakerOpenAfterMs = Date.now() - killedAt;
    await page.waitForFunction(() => Number(document.querySelector("#health .score").textContent) < 100, null, { timeout: 10000 });
    findings.scoreAfterKill = Number(await page.locator("#health .score").textContent());
    await page.screenshot({ path: screenshot, fullPage: true });

    // The page reconnects by itself when its socket drops.
    const before = await page.locator("#updated").textContent();
    await page.evaluate(() => state.socket.close());
    await page.waitForSelector('#link[data-state="reconnecting"]', { timeout: 5000 });
    await page.waitForSelector('#link[data-state="live"]', { timeout: 15000 });
    await page.waitForFunction((b) => document.querySelector("#updated").textContent !== b, before, { timeout: 10000 });
    findings.reconnected = true;

    // Start the endpoint again: once its health checks pass it takes streams again - healthy,
    // or degraded while a breaker its failed streams opened lets probes through.
    const restartedAt = Date.now();
    await api("/api/v1/demo/endpoints/slow/start", "POST");
    await page.waitForSelector('[data-endpoint="slow"]:not([data-health="unhealthy"])', { timeout: 20000 });
    findings.usableAgainAfterMs = Date.now() - restartedAt;

    check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(" | ")}`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => {
    console.log(JSON.stringify({ ok: true, ...findings }));
  },
  (error) => {
    console.log(JSON.stringify({ ok: false, error: String(error.message || error), pageErrors, ...findings }));
    process.exit(1);
  },
);
