#!/usr/bin/env node
// End-to-end test of the demo chat page (src/http/demo.html) in headless Chromium.
//
// Starts the gateway itself (`<SOCKET_SERVER_BIN> --demo` on a free loopback port, with a store
// in a temporary directory), opens the page it serves at `/` in two browser contexts (alice and
// bob, plus carol briefly and a second page for bob), and drives the UI: connect, presence,
// typing, messages, read receipts ("Seen by"), unread badges, history (`chat:history`: a chat
// opened for the first time shows its latest messages; "Load earlier messages" pages back), a
// readable error, authentication failure (4001, no retry), a server restart (SIGTERM →
// SERVER_SHUTDOWN + 1001 → the pages reconnect by themselves; bob's network stays down until
// alice has sent more, and his page fetches exactly what it missed) and the phone layout.
// Writes screenshots to ARTIFACT_DIR.
//
// Environment:
//   SOCKET_SERVER_BIN  gateway binary (required)
//   ARTIFACT_DIR       where screenshots go (default: <repo>/target/browser-artifacts)
//   CHROMIUM           Chromium executable (default: /usr/bin/chromium)
//   UPDATE_README_SCREENSHOT=1  also copy the side-by-side screenshot to docs/demo.png
//   DEMO_PAGE_URL      development only: load the page from this URL instead of the gateway's
//                      `/` (the page is then pointed at the gateway through its server field,
//                      and the gateway gets CORS_ORIGIN=*)
//
// Exits 0 when every check passed; otherwise prints what failed (with the gateway's log tail)
// and exits 1. Every wait is bounded.

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const BIN = process.env.SOCKET_SERVER_BIN;
const ARTIFACT_DIR = path.resolve(process.env.ARTIFACT_DIR || path.join(REPO, "target", "browser-artifacts"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PAGE_URL_OVERRIDE = process.env.DEMO_PAGE_URL || "";
const STEP_MS = 10_000; // every single expectation
const RECONNECT_MS = 20_000; // reconnect after a restart (backoff is capped at 10 s)
const WHOLE_MS = 150_000; // the whole script (tests/browser.rs kills it after 180 s)
const VIEWPORT = { width: 820, height: 620 };
const API_KEY = "browser-test-api-key-0123";

// One server API call (the product backend's side); returns { status, body }.
async function api(method, pathname, body) {
  const res = await fetch(`http://127.0.0.1:${gateway.port}${pathname}`, {
    method,
    headers: { Authorization: `Bearer ${API_KEY}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await res.text();
  let parsed = null;
  try { parsed = JSON.parse(text); } catch (_) { parsed = text; }
  return { status: res.status, body: parsed };
}

const started = Date.now();
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1).padStart(5) + "s";
const log = (...a) => console.log(elapsed(), ...a);
let currentStep = "start-up";
function step(name) {
  currentStep = name;
  log("▶", name);
}

// ---- clean-up, whatever happens ----------------------------------------------------------
let gateway = null;
let browser = null;
let tmpDir = null;
function cleanupSync() {
  if (gateway && gateway.alive()) {
    try { gateway.child.kill("SIGKILL"); } catch (_) { /* gone */ }
  }
  if (tmpDir) {
    try { fs.rmSync(tmpDir, { recursive: true, force: true }); } catch (_) { /* best effort */ }
    tmpDir = null;
  }
}
process.on("exit", cleanupSync);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    console.error(`\nFAIL: interrupted by ${sig} during "${currentStep}"`);
    cleanupSync();
    process.exit(1);
  });
}
const watchdog = setTimeout(() => {
  console.error(`\nFAIL: the whole test took longer than ${WHOLE_MS / 1000} s (stuck in "${currentStep}")`);
  dumpGatewayLog();
  cleanupSync();
  process.exit(1);
}, WHOLE_MS);
watchdog.unref();

// ---- helpers -----------------------------------------------------------------------------
class CheckFailed extends Error {}
function check(cond, message) {
  if (!cond) throw new CheckFailed(message);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `probe` (async, returns a value) until `ok(value)`; fails with `what` after `timeout`.
async function waitFor(what, probe, ok = Boolean, timeout = STEP_MS) {
  const deadline = Date.now() + timeout;
  let last;
  let lastError = null;
  for (;;) {
    try {
      last = await probe();
      lastError = null;
      if (ok(last)) return last;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const seen = lastError ? `error: ${lastError.message.split("\n")[0]}` : `last value: ${JSON.stringify(last)}`;
      throw new CheckFailed(`timed out after ${timeout / 1000} s waiting for ${what} (${seen})`);
    }
    await sleep(100);
  }
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function httpStatus(url, timeout = 1000) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

// ---- the gateway -------------------------------------------------------------------------
// Only these variables are inherited; everything the server reads is set explicitly, so no
// HTTP_API_URL, BENCH_FIXTURE, DEMO, WS_PORT, NOTIFY_SOCKET, ... of the caller leaks in.
const INHERITED_ENV = ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "RUST_BACKTRACE"];
function gatewayEnv(port, storePath) {
  const env = {};
  for (const k of INHERITED_ENV) if (process.env[k] !== undefined) env[k] = process.env[k];
  Object.assign(env, {
    WS_PORT: String(port),
    HOST: "127.0.0.1",
    WORKERS: "2",
    STORE_PATH: storePath,
    LOG_LEVEL: "info",
    TYPING_TIMEOUT: "3000",
    // Keep the restart quick: the drain has almost nothing to finish.
    SHUTDOWN_TIMEOUT: "3000",
    DRAIN_WINDOW: "500",
    API_KEY: API_KEY,
  });
  if (PAGE_URL_OVERRIDE) env.CORS_ORIGIN = "*";
  return env;
}

class Gateway {
  constructor(port, storePath) {
    this.port = port;
    this.lines = [];
    this.exit = null;
    this.child = spawn(BIN, ["--demo"], {
      cwd: path.dirname(storePath), // no .env of the repository is picked up
      env: gatewayEnv(port, storePath),
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      this.child.once("error", (e) => {
        this.exit = { code: null, signal: null, error: e.message };
        resolve(this.exit);
      });
    });
    const collect = (stream, tag) => {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.lines.push(tag + buf.slice(0, i));
          buf = buf.slice(i + 1);
          if (this.lines.length > 400) this.lines.shift();
        }
      });
    };
    collect(this.child.stdout, "");
    collect(this.child.stderr, "[stderr] ");
  }
  alive() {
    return this.exit === null;
  }
  async waitHealthy(timeout = 15_000) {
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
      if (!this.alive()) return false;
      if ((await httpStatus(`http://127.0.0.1:${this.port}/healthz`)) === 200) return true;
      await sleep(100);
    }
    throw new CheckFailed(`the gateway did not answer GET /healthz with 200 within ${timeout / 1000} s`);
  }
  async waitExit(timeout) {
    const t = sleep(timeout).then(() => null);
    return Promise.race([this.exited, t]);
  }
}

// Starts the gateway on `port`; retries a few times if it exits at once (the port may still be
// held by the previous process for a moment).
async function startGateway(port, storePath) {
  for (let attempt = 1; attempt <= 5; attempt++) {
    const gw = new Gateway(port, storePath);
    gateway = gw;
    if (await gw.waitHealthy()) return gw;
    log(`  gateway exited during start-up (${JSON.stringify(gw.exit)}), attempt ${attempt}; retrying`);
    await sleep(500);
  }
  throw new CheckFailed(`the gateway would not start on port ${port} (see its log below)`);
}

function dumpGatewayLog() {
  if (!gateway) return;
  console.error(`\n--- gateway log (last ${Math.min(gateway.lines.length, 60)} lines) ---`);
  for (const l of gateway.lines.slice(-60)) console.error(l);
  console.error("--- end of gateway log ---");
}

// ---- page helpers ------------------------------------------------------------------------
const pageErrors = [];
let pageUrl = "";
let wsUrl = "";

async function openPage(user, { viaUrl = false } = {}) {
  const context = await browser.newContext({ viewport: VIEWPORT, colorScheme: "light", deviceScaleFactor: 1 });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${user}: ${e.message}`));
  if (viaUrl) {
    const u = new URL(pageUrl);
    u.searchParams.set("token", `demo-${user}`);
    u.searchParams.set("autoconnect", "1");
    if (PAGE_URL_OVERRIDE) u.searchParams.set("server", wsUrl);
    await page.goto(u.href, { timeout: STEP_MS });
  } else {
    await page.goto(pageUrl, { timeout: STEP_MS });
  }
  const isDemoPage = await page.evaluate(() => !!document.querySelector('[data-testid="status"]') && typeof window.demo === "object");
  check(isDemoPage, `${pageUrl} is not the demo page of this checkout (no data-testid="status" / window.demo); `
    + "is SOCKET_SERVER_BIN built from it (the page is embedded with include_str!)?");
  if (!viaUrl) {
    await page.getByTestId(`pick-${user}`).click();
    const token = await page.getByTestId("token-input").inputValue();
    check(token === `demo-${user}`, `${user}: the quick picker should fill the token demo-${user}, got "${token}"`);
    if (PAGE_URL_OVERRIDE) await page.getByTestId("server-input").fill(wsUrl);
    await page.getByTestId("connect-button").click();
  }
  page.user = user;
  return page;
}

const statusOf = async (page) => ({
  state: await page.getByTestId("status").getAttribute("data-state"),
  text: (await page.getByTestId("status-text").textContent()).trim(),
});

async function expectConnected(page, timeout = STEP_MS) {
  await waitFor(`${page.user}'s status "connected as ${page.user}"`, () => statusOf(page),
    (s) => s.state === "connected" && s.text === `connected as ${page.user}`, timeout);
}

const message = (page, text) => page.locator('[data-testid="message"]', { hasText: text });
// The texts of the messages shown in the open chat, top to bottom.
const messageTexts = async (page) => (await page.getByTestId("message-text").allTextContents()).map((t) => t.trim());
const sameList = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function expectMessage(page, text, { sender, own }) {
  const m = message(page, text);
  await waitFor(`${page.user} to show the message "${text}"`, () => m.count(), (n) => n === 1);
  const got = {
    sender: (await m.getByTestId("message-sender").textContent()).trim(),
    own: await m.getAttribute("data-own"),
    pending: await m.getAttribute("data-pending"),
    text: (await m.getByTestId("message-text").textContent()).trim(),
    time: (await m.getByTestId("message-time").textContent()).trim(),
  };
  check(got.text === text, `${page.user}: message text should be "${text}", got "${got.text}"`);
  check(got.sender === sender, `${page.user}: "${text}" should show sender "${sender}", got "${got.sender}"`);
  check(got.own === String(own), `${page.user}: "${text}" should be ${own ? "own" : "from someone else"} (data-own=${got.own})`);
  check(/^\d\d:\d\d$/.test(got.time), `${page.user}: "${text}" should show a HH:MM time, got "${got.time}"`);
  if (own) {
    await waitFor(`${page.user}'s own "${text}" to be confirmed by the server`, () => m.getAttribute("data-pending"), (p) => p === "false");
  }
  return m;
}

async function expectTestIdText(page, testId, expected, what) {
  const loc = page.getByTestId(testId);
  await waitFor(`${page.user}: ${what} = ${JSON.stringify(expected)}`, async () => (await loc.textContent()).trim(), (t) => t === expected);
}

async function expectOnline(page, userId) {
  const person = page.locator(`[data-testid="online-user"][data-user-id="${userId}"]`);
  await waitFor(`${page.user} to show ${userId} online`, () => person.getAttribute("data-online", { timeout: 500 }), (v) => v === "true");
}

async function selectedChat(page) {
  return page.locator('[data-testid="chat-item"][aria-current="true"]').getAttribute("data-chat-id", { timeout: 1000 });
}

async function unreadBadge(page, chatId) {
  const badge = page.locator(`[data-testid="chat-item"][data-chat-id="${chatId}"] [data-testid="unread-badge"]`);
  return (await badge.count()) ? (await badge.textContent()).trim() : "";
}

async function sideBySide(shots, file) {
  const figures = shots.map(({ label, png }) =>
    `<figure><figcaption>${label}</figcaption><img src="data:image/png;base64,${png.toString("base64")}"></figure>`).join("");
  const html = `<!doctype html><html><head><style>
    body { margin: 0; padding: 20px; background: #d5d9e2; display: flex; gap: 20px; align-items: flex-start;
      font: 600 14px system-ui, sans-serif; color: #333; }
    figure { margin: 0; } figcaption { margin: 0 0 6px 4px; }
    img { display: block; border-radius: 10px; box-shadow: 0 6px 24px rgba(0,0,0,.18); }
  </style></head><body>${figures}</body></html>`;
  const width = shots.reduce((w, s) => w + s.width, 0) + 20 * (shots.length + 1);
  const height = Math.max(...shots.map((s) => s.height)) + 70;
  const page = await browser.newPage({ viewport: { width, height }, deviceScaleFactor: 1 });
  try {
    await page.setContent(html, { timeout: STEP_MS });
    await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0), null, { timeout: STEP_MS });
    await page.screenshot({ path: file, fullPage: true, timeout: STEP_MS });
  } finally {
    await page.context().close();
  }
}

// ---- the test ------------------------------------------------------------------------------
async function main() {
  check(BIN, "SOCKET_SERVER_BIN is not set (path to the socket-server binary)");
  check(fs.existsSync(BIN), `SOCKET_SERVER_BIN=${BIN} does not exist`);
  check(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (install Debian's chromium: apt-get install -y chromium, or set CHROMIUM)`);
  fs.mkdirSync(ARTIFACT_DIR, { recursive: true });
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), "socket-server-browser-"));
  const storePath = path.join(tmpDir, "store.db");

  step("start the gateway");
  const port = await freePort();
  await startGateway(port, storePath);
  pageUrl = PAGE_URL_OVERRIDE || `http://127.0.0.1:${port}/`;
  wsUrl = `ws://127.0.0.1:${port}/ws`;
  log(`  gateway on port ${port}, page ${pageUrl}`);

  step("launch Chromium");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

  step("alice connects through the UI");
  const alice = await openPage("alice");
  await expectConnected(alice);
  const title = await alice.title();
  check(/socket-server/i.test(title), `the page title should name socket-server, got "${title}"`);
  await waitFor("alice to have #general selected by default", () => selectedChat(alice), (c) => c === "general");
  const aliceChats = await alice.locator('[data-testid="chat-item"]').evaluateAll((els) => els.map((e) => e.dataset.chatId));
  log(`  alice's chats: ${aliceChats.join(", ")}`);

  step("bob connects; alice sees him come online");
  const bob = await openPage("bob");
  await expectConnected(bob);
  await waitFor("bob to have #general selected by default", () => selectedChat(bob), (c) => c === "general");
  await expectOnline(alice, "bob");

  step("bob starts typing; alice sees \"Bob is typing…\", which stops when he clears his draft");
  // (This is also how alice learns bob's display name: the protocol carries names only in
  // typing and message frames, so the page falls back to the user id until it has seen one.)
  await bob.getByTestId("message-input").pressSequentially("Hey", { delay: 15 });
  await expectTestIdText(alice, "typing", "Bob is typing…", "typing line");
  await bob.getByTestId("message-input").fill("");
  await expectTestIdText(alice, "typing", "", "typing line after bob cleared his draft");

  step("alice types; bob sees the typing indicator and alice online");
  const hello = "Hi Bob! This is the socket-server demo.";
  await alice.getByTestId("message-input").pressSequentially(hello, { delay: 15 });
  await expectTestIdText(bob, "typing", "Alice is typing…", "typing line");
  await expectOnline(bob, "alice");

  step("alice sends (Enter); both see it, bob's typing line clears");
  await alice.getByTestId("message-input").press("Enter");
  await expectMessage(bob, hello, { sender: "Alice", own: false });
  const aliceHello = await expectMessage(alice, hello, { sender: "Alice", own: true });
  const inputAfter = await alice.getByTestId("message-input").inputValue();
  check(inputAfter === "", `alice's composer should be empty after sending, has "${inputAfter}"`);
  await expectTestIdText(bob, "typing", "", "typing line after the message");

  step("bob reads it automatically; alice sees \"Seen by Bob\"");
  await waitFor('alice to show "Seen by Bob" under her message', async () => {
    const seen = aliceHello.getByTestId("seen-by");
    return (await seen.count()) ? (await seen.textContent()).trim() : "";
  }, (t) => t === "Seen by Bob");

  step("bob replies; alice sees it, bob sees \"Seen by Alice\"");
  const reply = "Hello Alice, I see you typing and I see your message.";
  await bob.getByTestId("message-input").fill(reply);
  await bob.getByTestId("send-button").click();
  await expectMessage(alice, reply, { sender: "Bob", own: false });
  const bobReply = await expectMessage(bob, reply, { sender: "Bob", own: true });
  await waitFor('bob to show "Seen by Alice" under his reply', async () => {
    const seen = bobReply.getByTestId("seen-by");
    return (await seen.count()) ? (await seen.textContent()).trim() : "";
  }, (t) => t === "Seen by Alice");
  const aliceSeenCount = await alice.getByTestId("seen-by").count();
  check(aliceSeenCount === 1, `alice should show exactly one "Seen by" line, shows ${aliceSeenCount}`);

  step("screenshot: the two windows side by side");
  await alice.getByTestId("message-input").pressSequentially("Let's try #random", { delay: 10 });
  await expectTestIdText(bob, "typing", "Alice is typing…", "typing line");
  const twoUsers = path.join(ARTIFACT_DIR, "demo-two-users.png");
  await sideBySide([
    { label: "alice", png: await alice.screenshot({ timeout: STEP_MS }), ...VIEWPORT },
    { label: "bob", png: await bob.screenshot({ timeout: STEP_MS }), ...VIEWPORT },
  ], twoUsers);
  log(`  wrote ${twoUsers}`);
  if (process.env.UPDATE_README_SCREENSHOT === "1") {
    fs.mkdirSync(path.join(REPO, "docs"), { recursive: true });
    fs.copyFileSync(twoUsers, path.join(REPO, "docs", "demo.png"));
    log("  copied it to docs/demo.png");
  }
  await alice.getByTestId("message-input").fill("");
  await expectTestIdText(bob, "typing", "", "typing line after alice cleared her draft");

  step("a message in #random while bob views #general: unread badge, cleared by switching");
  for (const id of ["general", "random", "alice-bob"]) {
    check(aliceChats.includes(id), `--demo should seed chat "${id}" for alice; her chat list shows: ${aliceChats.join(", ")}`);
  }
  await alice.locator('[data-testid="chat-item"][data-chat-id="random"]').click();
  await waitFor("alice to have #random selected", () => selectedChat(alice), (c) => c === "random");
  const lunch = "Anyone up for lunch?";
  await alice.getByTestId("message-input").fill(lunch);
  await alice.getByTestId("message-input").press("Enter");
  await expectMessage(alice, lunch, { sender: "Alice", own: true });
  await waitFor("bob's unread badge on #random to show 1", () => unreadBadge(bob, "random"), (t) => t === "1");
  check((await selectedChat(bob)) === "general", "bob should still be in #general");
  check((await message(bob, lunch).count()) === 0, "bob must not see #random's message while in #general");
  check((await unreadBadge(bob, "general")) === "", "bob's #general should have no unread badge");
  await bob.locator('[data-testid="chat-item"][data-chat-id="random"]').click();
  await expectMessage(bob, lunch, { sender: "Alice", own: false });
  await waitFor("bob's unread badge on #random to disappear", () => unreadBadge(bob, "random"), (t) => t === "");
  const aliceLunch = message(alice, lunch);
  await waitFor('alice to show "Seen by Bob" under the #random message', async () => {
    const seen = aliceLunch.getByTestId("seen-by");
    return (await seen.count()) ? (await seen.textContent()).trim() : "";
  }, (t) => t === "Seen by Bob");

  step("carol (autoconnect from the URL) writes to alice-bob: a readable NOT_PARTICIPANT error");
  const carol = await openPage("carol", { viaUrl: true });
  await expectConnected(carol);
  // Nobody sends anything now: what carol's #general shows comes from chat:history.
  await waitFor("carol to have #general selected", () => selectedChat(carol), (c) => c === "general");
  await waitFor("carol's #general to show its stored messages (latest page), in order, once each",
    () => messageTexts(carol), (t) => sameList(t, [hello, reply]));
  await expectMessage(carol, hello, { sender: "Alice", own: false });
  await expectMessage(carol, reply, { sender: "Bob", own: false });
  const carolChats = await carol.locator('[data-testid="chat-item"]').evaluateAll((els) => els.map((e) => e.dataset.chatId));
  check(!carolChats.includes("alice-bob"), `carol must not list alice-bob (lists ${carolChats.join(", ")})`);
  const sent = await carol.evaluate(() => window.demo.send("chat:message", { chatId: "alice-bob", content: "let me in" }));
  check(sent === true, "window.demo.send should send on the open socket");
  const toast = carol.locator('[data-testid="error-toast"][data-code="NOT_PARTICIPANT"]');
  await waitFor("carol to show a NOT_PARTICIPANT error", () => toast.isVisible(), (v) => v === true);
  const toastText = (await toast.textContent()).trim();
  check(/not a member/i.test(toastText), `the error should be explained in words, got "${toastText}"`);
  log(`  error shown: ${JSON.stringify(toastText)}`);

  step("the server API adds carol to alice-bob (chat:new), a backend message arrives, then it removes her (chat:removed)");
  const carolList = () => carol.locator('[data-testid="chat-item"]').evaluateAll((els) => els.map((e) => e.dataset.chatId));
  let answer = await api("POST", "/api/chats/alice-bob/members", { userId: "carol" });
  check(answer.status === 200 && answer.body.connections >= 1, `adding carol should reach her connection: ${JSON.stringify(answer)}`);
  await waitFor("carol's list to gain alice-bob after chat:new", carolList, (l) => l.includes("alice-bob"));
  await carol.locator('[data-testid="chat-item"][data-chat-id="alice-bob"]').click();
  await waitFor("carol to have alice-bob selected", () => selectedChat(carol), (c) => c === "alice-bob");
  answer = await api("POST", "/api/chats/alice-bob/messages", { id: "bot-1", senderId: "deploybot", senderName: "Deploy Bot", content: "Build 42 is live" });
  check(answer.status === 200 && answer.body.delivered >= 2, `the backend message should reach alice and carol: ${JSON.stringify(answer)}`);
  await waitFor("carol to show the backend's message", () => carol.locator('[data-testid="message"]').allTextContents(),
    (t) => t.some((x) => x.includes("Build 42 is live") && x.includes("Deploy Bot")));
  answer = await api("DELETE", "/api/chats/alice-bob/members/carol");
  check(answer.status === 200 && answer.body.connections >= 1, `removing carol should reach her connection: ${JSON.stringify(answer)}`);
  await waitFor("carol's list to lose alice-bob after chat:removed", carolList, (l) => !l.includes("alice-bob"));
  await waitFor("carol to be moved back to #general", () => selectedChat(carol), (c) => c === "general");

  step("a bad token: authentication failed (4001), shown, and no automatic reconnect");
  check(!(await carol.getByTestId("token-input").isVisible()), "the connection panel should fold away once connected");
  await carol.getByTestId("conn-toggle").click();
  await carol.getByTestId("token-input").fill("not-a-valid-token");
  await carol.getByTestId("connect-button").click();
  await waitFor("carol's status to say authentication failed", () => statusOf(carol),
    (s) => s.state === "auth-failed" && /authentication failed/i.test(s.text));
  const banner = (await carol.getByTestId("banner").textContent()).trim();
  check(/4001/.test(banner) && /authentication failed/i.test(banner), `the banner should explain close 4001, got "${banner}"`);
  await sleep(1500);
  const after = await statusOf(carol);
  check(after.state === "auth-failed", `after 4001 the page must not reconnect, but its status is now ${JSON.stringify(after)}`);
  await carol.context().close();

  step("server restart: SIGTERM, both pages show reconnecting");
  const tStop = Date.now();
  gateway.child.kill("SIGTERM");
  const exit = await gateway.waitExit(20_000);
  check(exit !== null, "the gateway did not exit within 20 s of SIGTERM");
  check(exit.code === 0, `the gateway should exit 0 after SIGTERM, got ${JSON.stringify(exit)}`);
  log(`  gateway exited after ${((Date.now() - tStop) / 1000).toFixed(1)} s`);
  for (const page of [alice, bob]) {
    await waitFor(`${page.user}'s status "reconnecting in N s (attempt N)"`, () => statusOf(page),
      (s) => s.state === "reconnecting" && /^reconnecting in \d+ s \(attempt \d+\)$/.test(s.text));
    const hist = await page.evaluate(() => window.demo.statusLog);
    const got1001 = hist.some((e) => e.at >= tStop && e.state === "reconnecting" && /1001/.test(e.detail));
    check(got1001, `${page.user} should have explained close 1001 (server restarting); status history: ${JSON.stringify(hist.slice(-6))}`);
  }
  const shutdownNotes = await alice.locator('[data-testid="info-toast"][data-code="SERVER_SHUTDOWN"]').count()
    + await bob.locator('[data-testid="info-toast"][data-code="SERVER_SHUTDOWN"]').count();
  check(shutdownNotes >= 1, "the SERVER_SHUTDOWN error frame should be shown (as a notice)");

  step("server restart: start it again while bob's network is down; alice reconnects and sends 3 messages bob misses");
  // Playwright's offline mode keeps open sockets but fails new ones: bob's page keeps trying to
  // reconnect (with backoff) and cannot, so the messages below never reach it live.
  await bob.context().setOffline(true);
  await startGateway(port, storePath);
  await expectConnected(alice, RECONNECT_MS);
  await alice.locator('[data-testid="chat-item"][data-chat-id="general"]').click();
  await waitFor("alice to have #general selected", () => selectedChat(alice), (c) => c === "general");
  const missed = ["Missed 1: the server restarted.", "Missed 2: bob was offline.", "Missed 3: his page should catch up."];
  for (const text of missed) {
    await alice.getByTestId("message-input").fill(text);
    await alice.getByTestId("message-input").press("Enter");
    await expectMessage(alice, text, { sender: "Alice", own: true });
  }
  const bobLog = await bob.evaluate(() => window.demo.statusLog);
  check(!bobLog.some((e) => e.at >= tStop && e.state === "connected"),
    `bob must not have reconnected while offline (the gap would not be real); status history: ${JSON.stringify(bobLog.slice(-4))}`);

  step("bob's network is back: his page reconnects by itself and fetches exactly what it missed");
  await bob.context().setOffline(false);
  await expectConnected(bob, RECONNECT_MS);
  check((await message(bob, lunch).count()) === 1, "bob should still show the messages from before the restart");
  check((await selectedChat(bob)) === "random", "bob should still be in #random");
  await waitFor("bob's unread badge on #general to count the 3 missed messages", () => unreadBadge(bob, "general"), (t) => t === "3");
  await bob.locator('[data-testid="chat-item"][data-chat-id="general"]').click();
  await waitFor("bob's #general to show the 3 missed messages after the earlier ones, in order, once each",
    () => messageTexts(bob), (t) => sameList(t, [hello, reply, ...missed]));
  for (const text of missed) await expectMessage(bob, text, { sender: "Alice", own: false });
  await waitFor("bob's unread badge on #general to disappear", () => unreadBadge(bob, "general"), (t) => t === "");
  await waitFor('alice to show "Seen by Bob" under the last missed message (bob read it once shown)', async () => {
    const seen = message(alice, missed[2]).getByTestId("seen-by");
    return (await seen.count()) ? (await seen.textContent()).trim() : "";
  }, (t) => t === "Seen by Bob");
  // alice-bob's last message, the backend's "Build 42 is live", is not stored by the gateway, so
  // asking for what came after it is refused: the pages must recover from that silently.
  for (const page of [alice, bob]) {
    await waitFor(`${page.user}'s history requests to be answered`, () => page.evaluate(() => window.demo.historyInFlight), (n) => n === 0);
    const errors = await page.locator('[data-testid="error-toast"]').allTextContents();
    check(errors.length === 0, `${page.user} should show no error after reconnecting, shows: ${JSON.stringify(errors)}`);
  }

  step("after the restart, live messages flow again");
  const back = "Back after the restart.";
  await alice.getByTestId("message-input").fill(back);
  await alice.getByTestId("message-input").press("Enter");
  await expectMessage(bob, back, { sender: "Alice", own: false });
  await expectMessage(alice, back, { sender: "Alice", own: true });

  step("phone width (375×740): chat switcher and composer visible");
  await bob.setViewportSize({ width: 375, height: 740 });
  const select = bob.getByTestId("chat-select");
  await waitFor("bob's chat switcher (select) to be visible", () => select.isVisible(), (v) => v === true);
  await waitFor("bob's composer to be visible", () => bob.getByTestId("composer").isVisible(), (v) => v === true);
  check(await bob.getByTestId("message-input").isVisible(), "the message input should be visible at phone width");
  check(await bob.getByTestId("send-button").isVisible(), "the send button should be visible at phone width");
  check(await bob.getByTestId("status").isVisible(), "the status should be visible at phone width");
  check(!(await bob.getByTestId("chat-list").isVisible()), "the sidebar chat list should collapse at phone width");
  await select.selectOption("general");
  await waitFor("bob to switch to #general with the select", () => select.inputValue(), (v) => v === "general");
  await expectMessage(bob, hello, { sender: "Alice", own: false });
  const width = await bob.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 375, `the page should not scroll sideways at phone width (scrollWidth ${width})`);
  const phone = path.join(ARTIFACT_DIR, "demo-phone.png");
  await bob.screenshot({ path: phone, timeout: STEP_MS });
  log(`  wrote ${phone}`);

  step("55 more messages in #random; a new page for bob opens #random: the latest 50, then \"Load earlier messages\"");
  await alice.locator('[data-testid="chat-item"][data-chat-id="random"]').click();
  await waitFor("alice to have #random selected", () => selectedChat(alice), (c) => c === "random");
  const bulk = Array.from({ length: 55 }, (_, i) => `Bulk message ${String(i + 1).padStart(2, "0")} of 55`);
  const sentBulk = await alice.evaluate((texts) => texts.every((content) => window.demo.send("chat:message", { chatId: "random", content })), bulk);
  check(sentBulk, "window.demo.send should send the 55 messages on the open socket");
  const randomAll = [lunch, ...bulk];
  await waitFor("alice to show all 55 (each echoed by the server, so stored)", () => messageTexts(alice), (t) => sameList(t, randomAll));
  const bob2 = await openPage("bob");
  await expectConnected(bob2);
  await bob2.locator('[data-testid="chat-item"][data-chat-id="random"]').click();
  await waitFor("bob's new page to have #random selected", () => selectedChat(bob2), (c) => c === "random");
  await waitFor("bob's new page to show the latest 50 messages of #random", () => messageTexts(bob2), (t) => sameList(t, randomAll.slice(-50)));
  const earlier = bob2.getByTestId("load-earlier");
  await waitFor('the "Load earlier messages" button to be shown and enabled', async () => (await earlier.isVisible()) && (await earlier.isEnabled()), (v) => v === true);
  await earlier.click();
  await waitFor("bob's new page to show all of #random, in order, once each", () => messageTexts(bob2), (t) => sameList(t, randomAll));
  await waitFor('the "Load earlier messages" button to go away (nothing more)', () => earlier.count(), (n) => n === 0);
  await expectMessage(bob2, lunch, { sender: "Alice", own: false });
  await bob2.context().close();

  check(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join("; ")}`);
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  const msg = e instanceof CheckFailed ? e.message : (e && e.stack) || String(e);
  console.error(`\nFAIL in step "${currentStep}": ${msg}`);
  if (pageErrors.length) console.error(`uncaught errors in the page: ${pageErrors.join("; ")}`);
  if (browser) {
    try {
      for (const [i, ctx] of browser.contexts().entries()) {
        for (const [j, p] of ctx.pages().entries()) {
          const f = path.join(ARTIFACT_DIR, `failure-${i}-${j}.png`);
          await p.screenshot({ path: f, timeout: 5000 });
          console.error(`screenshot of an open page: ${f}`);
        }
      }
    } catch (_) { /* best effort */ }
  }
  dumpGatewayLog();
} finally {
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), sleep(10_000)]);
  }
  if (gateway && gateway.alive()) {
    gateway.child.kill("SIGTERM");
    if ((await gateway.waitExit(10_000)) === null) gateway.child.kill("SIGKILL");
  }
  cleanupSync();
}
clearTimeout(watchdog);
if (failed) process.exit(1);
log("PASS: the demo page works end to end");
process.exit(0);
