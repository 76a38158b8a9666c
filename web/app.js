// The upload page. Files (chosen, a folder, or dropped) are sent one after another, each in
// chunks read, hashed and sent in one pass with a bounded number in flight; progress counts
// what the server acknowledged (durable). The upload id and chunk digests are kept in
// IndexedDB, so a closed tab resumes; and for a file this browser has no record of, the server
// is asked what it holds of it (`lookup`): the same content complete is not sent again, an
// unfinished upload of the same bytes is resumed. The link is checked when the page opens.
// The server may announce the other nodes of its service (`peers`): a lost session reconnects
// through the next one. Where WebTransport is missing or its session cannot be opened (a network that blocks UDP),
// the page sends over tus on the web listener instead (`tus.js`), resuming the same way from its
// IndexedDB record, and says which path it uses (#via). `?via=tus` chooses tus from the start.
// DOM contract for automation: #files, #upload, #status ("ready", "complete" or "failed: CODE
// message"), #via (data-via "webtransport" or "tus"), a file's note ("already on the server as
// NAME" for a skipped one).

import { Session, FerryError, sha256Hex, contentHash, RETRY, EXPLAIN } from "./ferry.js";
import { Tus, PATCH_SIZE } from "./tus.js";

const CHUNK_SIZE = 8 << 20;
/** Chunks sent and not yet acknowledged, at most (memory: this many chunk buffers, 48 MiB). */
const IN_FLIGHT = 6;
/** Reconnections after a lost connection before the page gives up. */
const RECONNECTS = 8;
/** Chunks in flight with no ack or rejection for this long: start a new session and ask the
 * server what it holds (a stream can fail without the page learning of it). */
const STALL_MS = 60000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const grant = (location.pathname.match(/\/u\/(fl_[0-9a-f]+)/) || [])[1] || location.hash.slice(1);
// The web listener: this page's own origin, or ?server=HOST:PORT when the page is hosted
// elsewhere.
const server = params.get("server");
const base = server ? `https://${server}` : location.origin;
const quicHost = server ? server.replace(/:\d+$/, "") : location.hostname;
// ?limit=20M caps the sending rate (bytes per second; K, M, G suffixes), to spare a shared
// uplink.
const limit = parseRate(params.get("limit"));
const tus = new Tus(base, grant);
/** The path files go by: "webtransport", or "tus" (HTTPS on TCP). */
let via = params.get("via") === "tus" || !("WebTransport" in window) ? "tus" : "webtransport";

/** Says which path the page uses, and why when it is not the first choice. */
function showVia(why) {
  const el = $("via");
  el.dataset.via = via;
  el.textContent = via === "tus"
    ? `Sending over HTTPS (tus)${why ? `: ${why}` : ""}.`
    : "Sending over WebTransport (QUIC).";
}

function parseRate(text) {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)$/i.exec(text || "");
  if (!m) return 0;
  return Number(m[1]) * 1024 ** " KMG".indexOf((m[2] || " ").toUpperCase());
}

let session = null;
/** The session being opened, so the check on load and Upload share one. */
let opening = null;
let paused = false;
let running = false;
let dropped = [];
/** Uploads by id, for the pushed acks and rejections. */
const active = new Map();

// ---- IndexedDB: what a closed tab needs to resume ----

const db = new Promise((resolve, reject) => {
  const open = indexedDB.open("ferry", 1);
  open.onupgradeneeded = () => open.result.createObjectStore("uploads", { keyPath: "key" });
  open.onsuccess = () => resolve(open.result);
  open.onerror = () => reject(open.error);
});

async function idb(mode, act) {
  const store = (await db).transaction("uploads", mode).objectStore("uploads");
  return new Promise((resolve, reject) => {
    const req = act(store);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
const remember = (rec) => idb("readwrite", (s) => s.put(rec));
const recall = (key) => idb("readonly", (s) => s.get(key));
const forget = (key) => idb("readwrite", (s) => s.delete(key));

// ---- the page ----

function setStatus(text) {
  $("status").textContent = text;
}

function human(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) {
    bytes /= 1024;
    i++;
  }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Upload is offered when there is something new to send, and not while sending. */
function offer(enabled) {
  $("upload").disabled = !enabled;
}

function explain(code) {
  $("explain").textContent = EXPLAIN[code] || "";
}

function chosen() {
  const items = [];
  for (const file of $("files").files) items.push({ file, dir: [] });
  for (const file of $("folder").files) {
    const parts = (file.webkitRelativePath || file.name).split("/");
    items.push({ file, dir: parts.slice(0, -1) });
  }
  return items.concat(dropped);
}

function row(item) {
  const li = document.createElement("li");
  li.innerHTML = '<span class="name"></span><progress value="0"></progress><span class="note"></span>';
  li.querySelector(".name").textContent = [...item.dir, item.file.name].join("/");
  li.querySelector("progress").max = item.file.size || 1;
  $("list").append(li);
  item.li = li;
  item.note = (text) => (li.querySelector(".note").textContent = text);
  item.bar = (value) => (li.querySelector("progress").value = value);
}

// Dropped files and folders (walked with the entries API).
async function walk(entry, dir, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push({ file, dir });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const child of batch) await walk(child, [...dir, entry.name], out);
    }
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry()).filter(Boolean);
  for (const entry of entries) await walk(entry, [], dropped);
  chose();
});
for (const input of ["files", "folder"]) $(input).addEventListener("change", chose);

/** A new choice of files: ready to send them (unless the link is known to be unusable). */
function chose() {
  if (running || linkBroken) return;
  setStatus(`${chosen().length} file(s) chosen`);
  offer(chosen().length > 0);
}

// Leaving mid-upload loses nothing the server holds, but stops the rest: ask first.
window.addEventListener("beforeunload", (e) => {
  if (running && !paused) {
    e.preventDefault();
    e.returnValue = "";
  }
});

$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").textContent = paused ? "Resume" : "Pause";
  if (!paused) for (const up of active.values()) up.pump();
  for (const up of active.values()) up.show();
  if (running) setStatus(paused ? "paused" : "uploading");
});

$("upload").addEventListener("click", async () => {
  if (running) return;
  const items = chosen();
  if (!grant) {
    explain("no_link");
    return setStatus("failed: no_link this page was opened without an upload link");
  }
  if (!items.length) return setStatus("failed: no_files choose files first");
  running = true;
  offer(false);
  explain("");
  $("list").replaceChildren();
  items.forEach(row);
  try {
    for (const item of items) await withReconnects(item);
    setStatus("complete");
  } catch (e) {
    const code = e instanceof FerryError ? e.code : "internal";
    setStatus(`failed: ${code} ${e.message}`);
    explain(code);
    // Pressing Upload again goes on from what the server holds.
    offer(!["unauthorized", "token_revoked"].includes(code));
  } finally {
    running = false;
  }
});

// ---- the session ----

async function connect() {
  if (session && !session.closedWith) return session;
  if (!opening) opening = open().finally(() => (opening = null));
  return opening;
}

/** The service's web listeners: this page's, then the other nodes its server announces
 * (`peers`). A session opens on the one that worked last; when it is lost, the next one is
 * tried first, so a page whose node died goes on through another. */
const bases = [base];
let current = 0;
/** The codes that say "this node, not the service": try the next one. */
const NODE_TROUBLE = ["connection_lost", "shutting_down", "too_many_connections"];

async function open() {
  let failed = null;
  for (let tried = 0; tried < bases.length; tried++) {
    const at = (current + tried) % bases.length;
    try {
      session = await openAt(bases[at]);
      current = at;
      return session;
    } catch (e) {
      failed = e instanceof FerryError ? e : new FerryError("connection_lost", String(e && e.message ? e.message : e));
      if (!NODE_TROUBLE.includes(failed.code)) throw failed;
    }
  }
  throw failed;
}

async function openAt(at) {
  const answer = await fetch(`${at}/webtransport.json`, { cache: "no-store", signal: AbortSignal.timeout(5000) })
    .catch((e) => { throw new FerryError("connection_lost", `${at}: ${e.message || e}`); });
  if (!answer.ok) throw new FerryError("connection_lost", `the server answered ${answer.status}`);
  const info = await answer.json();
  for (const peer of info.peers || []) if (!bases.includes(peer)) bases.push(peer);
  const host = at === base ? quicHost : new URL(at).hostname;
  const opened = await Session.open({
    url: `https://${host}:${info.port}${info.path}`,
    hashes: info.certificate_hashes,
    token: grant,
    onPush: pushed,
    // Whatever was in flight is asked for again after the reconnection, through the next
    // node first (this one may be gone).
    onClose: (error) => {
      if (bases.length > 1 && NODE_TROUBLE.includes(error.code)) current = (current + 1) % bases.length;
      for (const up of active.values()) up.fail(error);
    },
  });
  $("who").textContent = `Uploading to ${opened.welcome.owner}'s folder`;
  return opened;
}

function pushed(frame) {
  const up = active.get(frame.upload_id);
  if (frame.type === "notice") $("explain").textContent = frame.text;
  if (!up) return;
  if (frame.type === "ack") up.acked(frame.chunks);
  else if (frame.type === "reject") up.rejected(frame.index, frame.code, frame.message);
  else if (frame.type === "detached") up.fail(new FerryError(frame.code, frame.message));
}

/** One file, reconnecting (and resuming) after lost connections. */
async function withReconnects(item) {
  for (let attempt = 0; ; attempt++) {
    try {
      if (via === "tus") return await uploadTus(item);
      await connect();
      return await upload(item);
    } catch (e) {
      const transient = e instanceof FerryError
        ? ["connection_lost", "shutting_down", "too_many_connections", "stalled", "chunk_in_progress", "storage_full"].includes(e.code)
        : true;
      if (session && e instanceof FerryError && e.code === "stalled") {
        session.close();
        session = null;
      }
      if (!transient || attempt >= RECONNECTS) throw e instanceof FerryError ? e : new FerryError("connection_lost", String(e));
      item.note(`connection lost; retrying (${attempt + 1})`);
      await new Promise((ok) => setTimeout(ok, Math.min(1000 * 2 ** attempt, 15000)));
    }
  }
}

/** The durable chunks of an upload: every page of `resume`. */
async function durableOf(uploadId) {
  let from = 0;
  let info = null;
  const durable = new Set();
  for (let page = 0; page < 100000; page++) {
    const reply = await session.request({ type: "resume", upload_id: uploadId, from });
    info = reply.upload;
    for (const [start, end] of info.durable) for (let i = start; i < end; i++) durable.add(i);
    if (info.durable_next === undefined || info.durable_next === null) break;
    from = info.durable_next;
  }
  return { info, durable };
}

/** The digests of every durable chunk of an unfinished upload (`digests`, every page). */
async function digestsOf(uploadId) {
  const out = new Map();
  let from = 0;
  for (let page = 0; page < 100000; page++) {
    const reply = await session.request({ type: "digests", upload_id: uploadId, from });
    for (const [index, digest] of reply.chunks) out.set(index, digest);
    if (reply.next === undefined || reply.next === null || reply.next <= from) break;
    from = reply.next;
  }
  return out;
}

/** The SHA-256 of chunk `index` of `file` with `chunkSize`. */
async function chunkDigest(file, chunkSize, index) {
  const at = index * chunkSize;
  return sha256Hex(await file.slice(at, Math.min(at + chunkSize, file.size)).arrayBuffer());
}

/** What the server holds of a file this browser has no record of (`lookup`), checked against
 * the file: `{skip: name}` for the same content complete, `{rec}` for an unfinished upload of the
 * same bytes (every chunk the server holds hashed here and compared), or `{}`. */
async function askServer(item, key) {
  const { file, dir } = item;
  const found = await session.request({ type: "lookup", file_name: file.name, dir, size: file.size });
  for (const complete of found.complete) {
    const count = Math.ceil(file.size / complete.chunk_size);
    const digests = [];
    for (let i = 0; i < count; i++) {
      digests.push(await chunkDigest(file, complete.chunk_size, i));
      item.note(`checking what the server holds: ${Math.round((100 * (i + 1)) / count)} %`);
    }
    if ((await contentHash(digests)) === complete.content_hash) return { skip: complete.file_name };
  }
  for (const receiving of found.receiving) {
    if (!receiving.durable_bytes) continue;
    const theirs = await digestsOf(receiving.upload_id);
    const digests = {};
    let same = true;
    for (const [index, digest] of theirs) {
      const ours = await chunkDigest(file, receiving.chunk_size, index);
      if (ours !== digest) {
        same = false;
        break;
      }
      digests[index] = ours;
    }
    if (same) return { rec: { key, uploadId: receiving.upload_id, chunkSize: receiving.chunk_size, digests } };
  }
  return {};
}

async function upload(item) {
  const { file, dir } = item;
  const key = `${grant.slice(0, 16)}|${[...dir, file.name].join("/")}|${file.size}|${file.lastModified}`;
  let rec = await recall(key);
  let info = null;
  let durable = new Set();
  if (rec) {
    try {
      ({ info, durable } = await durableOf(rec.uploadId));
    } catch (e) {
      if (!(e instanceof FerryError) || !["not_found", "expired"].includes(e.code)) throw e;
      await forget(key);
      rec = null;
    }
  }
  if (!rec) {
    const held = await askServer(item, key);
    if (held.skip) {
      item.bar(file.size || 1);
      item.li.dataset.sentBytes = "0";
      return item.note(`already on the server as ${held.skip}`);
    }
    if (held.rec) {
      rec = held.rec;
      await remember(rec);
      ({ info, durable } = await durableOf(rec.uploadId));
    }
  }
  if (!rec) {
    const created = await session.request({
      type: "create", file_name: file.name, size: file.size, chunk_size: CHUNK_SIZE,
      desc: "", dir, on_exists: "rename",
    });
    info = created.upload;
    rec = { key, uploadId: info.upload_id, chunkSize: info.chunk_size, digests: {} };
    await remember(rec);
  }
  const chunkSize = info.chunk_size;
  const count = info.chunk_count;
  const lengthOf = (i) => Math.min(chunkSize, file.size - i * chunkSize);
  const up = new Upload(item, rec, count, lengthOf, durable);
  active.set(rec.uploadId, up);
  try {
    await up.run();
  } finally {
    active.delete(rec.uploadId);
  }
  // Digests of chunks sent by an earlier page that kept none are read again (not re-sent).
  const digests = [];
  for (let i = 0; i < count; i++) {
    if (!rec.digests[i]) {
      const bytes = await file.slice(i * chunkSize, i * chunkSize + lengthOf(i)).arrayBuffer();
      rec.digests[i] = await sha256Hex(bytes);
    }
    digests.push(rec.digests[i]);
  }
  const finished = await session.request({
    type: "finish", upload_id: rec.uploadId, content_hash: await contentHash(digests),
  });
  await forget(key);
  item.bar(file.size || 1);
  item.note(`done: ${finished.file_name}`);
}

/** One file over tus: from the offset the server holds of this browser's record (which may be
 * an upload begun over WebTransport: the same upload, by its id), else a new upload. */
async function uploadTus(item) {
  const { file, dir } = item;
  const key = `${grant.slice(0, 16)}|${[...dir, file.name].join("/")}|${file.size}|${file.lastModified}`;
  let rec = await recall(key);
  let offset = null;
  if (rec) {
    offset = await tus.offset(tus.endpoint + rec.uploadId);
    if (offset === null) {
      await forget(key);
      rec = null;
    }
  }
  if (!rec) {
    const url = await tus.create(file, dir);
    rec = { key, uploadId: url.split("/").pop(), chunkSize: PATCH_SIZE, digests: {} };
    await remember(rec);
    offset = 0;
  }
  const url = tus.endpoint + rec.uploadId;
  const started = performance.now();
  const skipped = offset;
  let sent = 0;
  let published = null;
  const show = () => {
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0.2 ? (offset - skipped) / seconds : 0;
    const parts = [`${human(offset)} of ${human(file.size)}`];
    if (skipped) parts.push(`${human(skipped)} already on the server`);
    if (paused) parts.push("paused");
    else if (rate) parts.push(`${human(rate)}/s`);
    item.bar(offset);
    item.note(parts.join(" · "));
    item.li.dataset.sentBytes = String(sent);
    setStatus(paused ? "paused" : "uploading");
  };
  show();
  // Bounded by the file: each turn moves the offset on, or throws.
  for (let turn = 0; offset < file.size && turn < 1e7; turn++) {
    while (paused) await new Promise((ok) => setTimeout(ok, 200));
    if (limit > 0) {
      const due = started + ((offset - skipped) * 1000) / limit;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((ok) => setTimeout(ok, wait));
    }
    // To the end of the server's chunk: each answer acknowledges whole chunks.
    const end = Math.min(file.size, (Math.floor(offset / PATCH_SIZE) + 1) * PATCH_SIZE);
    const answer = await tus.patch(url, offset, file.slice(offset, end));
    if (answer.offset > offset) sent += answer.offset - offset;
    offset = answer.offset;
    if (answer.published) published = decodeURIComponent(answer.published);
    show();
  }
  await forget(key);
  item.bar(file.size || 1);
  item.note(`done: ${published || [...dir, file.name].join("/")}`);
}

/** Sends the chunks of one upload the server does not hold, at most IN_FLIGHT at once. */
class Upload {
  constructor(item, rec, count, lengthOf, durable) {
    Object.assign(this, { item, rec, count, lengthOf, durable });
    this.queue = [];
    for (let i = 0; i < count; i++) if (!durable.has(i)) this.queue.push(i);
    this.inFlight = new Set();
    this.started = performance.now();
    this.sent = 0;
    this.scheduled = 0;
    this.ackedBytes = 0;
    for (const i of durable) this.ackedBytes += lengthOf(i);
    this.skipped = this.ackedBytes;
  }

  run() {
    const done = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      this.show();
      if (this.durable.size === this.count) return resolve();
      this.pump();
    });
    this.lastProgress = performance.now();
    const watchdog = setInterval(() => {
      if (this.inFlight.size && !paused && performance.now() - this.lastProgress > STALL_MS) {
        this.fail(new FerryError("stalled", `no answer for chunks in flight for ${STALL_MS / 1000} s`));
      }
    }, 5000);
    return done.finally(() => clearInterval(watchdog));
  }

  pump() {
    while (!paused && this.inFlight.size < IN_FLIGHT && this.queue.length && !this.failed) {
      const index = this.queue.shift();
      this.inFlight.add(index);
      this.send(index).catch((e) => this.fail(e instanceof FerryError ? e : new FerryError("internal", String(e))));
    }
  }

  async send(index) {
    const size = this.lengthOf(index);
    if (limit > 0) {
      // Paced: this chunk starts once the chunks scheduled before it had 1/limit s per byte.
      const due = this.started + (this.scheduled * 1000) / limit;
      this.scheduled += size;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((ok) => setTimeout(ok, wait));
    }
    const at = index * this.rec.chunkSize;
    const bytes = await this.item.file.slice(at, at + size).arrayBuffer();
    const digest = await sha256Hex(bytes);
    if (this.rec.digests[index] !== digest) {
      this.rec.digests[index] = digest;
      await remember(this.rec);
    }
    if (!session || session.closedWith) throw session ? session.closedWith : new FerryError("connection_lost", "no session");
    await session.sendChunk(this.rec.uploadId, index, bytes, digest);
    this.sent += size;
    this.lastProgress = performance.now();
  }

  acked(ranges) {
    this.lastProgress = performance.now();
    for (const [start, end] of ranges) {
      for (let i = start; i < end; i++) {
        if (this.durable.has(i)) continue;
        this.durable.add(i);
        this.inFlight.delete(i);
        this.ackedBytes += this.lengthOf(i);
      }
    }
    this.show();
    if (this.durable.size === this.count) this.resolve();
    else this.pump();
  }

  rejected(index, code, message) {
    this.lastProgress = performance.now();
    this.inFlight.delete(index);
    if (RETRY.has(code)) {
      setTimeout(() => {
        this.queue.push(index);
        this.pump();
      }, 250);
    } else {
      this.fail(new FerryError(code, message));
    }
  }

  fail(error) {
    if (this.failed) return;
    this.failed = error;
    this.reject(error);
  }

  show() {
    const { file } = this.item;
    const seconds = (performance.now() - this.started) / 1000;
    const rate = seconds > 0.2 ? (this.ackedBytes - this.skipped) / seconds : 0;
    const left = rate > 0 ? Math.ceil((file.size - this.ackedBytes) / rate) : null;
    this.item.bar(this.ackedBytes);
    const parts = [`${human(this.ackedBytes)} of ${human(file.size)}`];
    if (this.skipped) parts.push(`${human(this.skipped)} already on the server`);
    if (paused) parts.push("paused");
    else {
      if (rate) parts.push(`${human(rate)}/s`);
      if (left !== null && this.ackedBytes < file.size) parts.push(`${left} s left`);
    }
    this.item.note(parts.join(" · "));
    this.item.li.dataset.sentBytes = String(this.sent);
    setStatus(paused ? "paused" : "uploading");
  }
}

/** Set when the link turned out unusable on load: nothing can be sent through it. */
let linkBroken = false;

/** The link checked over tus (the TCP path). */
function checkOverTus() {
  return tus.check().then(() => ({}));
}

offer(false);
showVia(via === "tus" && !("WebTransport" in window) ? "this browser has no WebTransport" : "");
if (!grant) {
  explain("no_link");
  setStatus("failed: no_link this page was opened without an upload link");
} else {
  // The link is checked now, not when Upload is pressed: an expired or revoked one says so.
  // A WebTransport session that cannot be opened (UDP blocked, an old browser) is not a
  // verdict on the link: the page falls back to tus and checks it there.
  setStatus("checking the link");
  const checked = via === "tus"
    ? checkOverTus()
    : connect().catch((e) => {
      const code = e instanceof FerryError ? e.code : "connection_lost";
      if (["unauthorized", "token_revoked"].includes(code)) throw e;
      via = "tus";
      showVia(`no WebTransport session (${e.message || code})`);
      return checkOverTus();
    });
  checked.then(
    () => {
      if (running) return;
      setStatus(chosen().length ? `${chosen().length} file(s) chosen` : "ready");
      offer(chosen().length > 0);
    },
    (e) => {
      const code = e instanceof FerryError ? e.code : "connection_lost";
      if (["unauthorized", "token_revoked"].includes(code)) linkBroken = true;
      if (running) return;
      setStatus(`failed: ${code} ${e.message}`);
      explain(code);
      offer(!linkBroken && chosen().length > 0);
    },
  );
}
