// Drives the Shop page in Debian's Chromium: attach a product photo to the chat input,
// send it, wait for the product cards; repeat. Prints one JSON line per turn.
//
//   node shop.js --url http://127.0.0.1:8501 --photo a.jpg [--photo b.jpg ...]
//                [--turns 1] [--screenshot out.png] [--timeout 60000]
//
// Used by tests/ui/test_browser.py (one turn, a screenshot) and benchmarks/ui_latency.py
// (many turns, timings). Nothing is downloaded: playwright-core drives /usr/bin/chromium.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-dev-shm-usage'];

function parseArgs(argv) {
  const args = { photo: [], turns: 1, timeout: 60000, screenshot: null, url: null };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (key === 'photo') args.photo.push(value);
    else if (key === 'turns' || key === 'timeout') args[key] = Number(value);
    else args[key] = value;
  }
  if (!args.url || args.photo.length === 0) {
    throw new Error('usage: node shop.js --url URL --photo FILE [--turns N] [--screenshot F]');
  }
  return args;
}

// The product cards are containers keyed card-<entry>-<rank> (class st-key-card-...).
async function cardEntries(page) {
  return page.evaluate(() => {
    const ids = [];
    for (const el of document.querySelectorAll('[class*="st-key-card-"]')) {
      const m = /st-key-card-(\d+)-(\d+)/.exec(el.className);
      if (m) ids.push(Number(m[1]));
    }
    return ids;
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'shopassist-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: FLAGS,
    viewport: { width: 1280, height: 1000 },
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(args.timeout);
    await page.goto(args.url, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('[data-testid="stChatInput"]');
    for (let turn = 0; turn < args.turns; turn++) {
      const photo = args.photo[turn % args.photo.length];
      const before = Math.max(-1, ...(await cardEntries(page)));
      const input = page.locator('[data-testid="stChatInput"] input[type="file"]');
      await input.setInputFiles(photo);
      const send = page.locator('[data-testid="stChatInputSubmitButton"]');
      await page.waitForFunction(
        (el) => el && !el.disabled, await send.elementHandle(), { timeout: args.timeout });
      const started = Date.now();
      await send.click();
      await page.waitForFunction((prev) => {
        for (const el of document.querySelectorAll('[class*="st-key-card-"]')) {
          const m = /st-key-card-(\d+)-/.exec(el.className);
          if (m && Number(m[1]) > prev) return true;
        }
        return false;
      }, before, { timeout: args.timeout });
      const cardsMs = Date.now() - started;
      // Every photo in the new cards decoded: what the shopper actually sees.
      await page.waitForFunction((prev) => {
        const imgs = [];
        for (const el of document.querySelectorAll('[class*="st-key-card-"]')) {
          const m = /st-key-card-(\d+)-/.exec(el.className);
          if (m && Number(m[1]) > prev) imgs.push(...el.querySelectorAll('img'));
        }
        return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
      }, before, { timeout: args.timeout });
      const imagesMs = Date.now() - started;
      const entries = await cardEntries(page);
      const newest = Math.max(...entries);
      const cards = entries.filter((e) => e === newest).length;
      console.log(JSON.stringify({ turn, photo: path.basename(photo), cards_ms: cardsMs,
        images_ms: imagesMs, cards }));
    }
    if (args.screenshot) {
      fs.mkdirSync(path.dirname(args.screenshot), { recursive: true });
      await page.screenshot({ path: args.screenshot, fullPage: true });
    }
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
