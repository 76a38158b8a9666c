// The page's TCP path: tus 1.0 over HTTPS on the web listener (`/files/`), for browsers without
// WebTransport or networks that block UDP. One PATCH per server chunk (8 MiB), one at a time;
// the server answers a PATCH only once its bytes are durable, so the offset it gives is what
// progress shows. The upload's URL is kept in IndexedDB (by the caller), and a later page asks
// the server for the offset (HEAD) and goes on from there.

import { FerryError } from "./ferry.js";

/** Bytes per PATCH: the server's chunk size, so each answer acknowledges whole chunks. */
export const PATCH_SIZE = 8 << 20;

const TUS = { "Tus-Resumable": "1.0.0" };

/** The error of a non-2xx answer: its JSON `code` and `message` when the server gave them. */
async function failure(answer) {
  let code = answer.status === 401 ? "unauthorized" : "connection_lost";
  let message = `the server answered ${answer.status}`;
  try {
    const body = await answer.json();
    if (body.code) code = body.code;
    if (body.message) message = body.message;
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  return new FerryError(code, message);
}

/** A fetch whose network failure is a transient `connection_lost`. */
async function call(url, init) {
  try {
    return await fetch(url, { ...init, cache: "no-store" });
  } catch (e) {
    throw new FerryError("connection_lost", String(e && e.message ? e.message : e));
  }
}

function b64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

/** The tus endpoint of the web listener at `base`, for the upload link `grant`. */
export class Tus {
  constructor(base, grant) {
    this.endpoint = `${base}/files/`;
    this.auth = { Authorization: `Bearer ${grant}` };
  }

  /** Checks the link: a HEAD of an upload that cannot exist is 404 for a valid grant, 401 for
   * an unknown, revoked or expired one. A HEAD has no body: the reason is the challenge's
   * `error_description`, the same text the WebTransport path shows. */
  async check() {
    const answer = await call(`${this.endpoint}${"0".repeat(32)}`, {
      method: "HEAD", headers: { ...TUS, ...this.auth },
    });
    if (answer.status === 401) {
      const why = /error_description="([^"]*)"/.exec(answer.headers.get("WWW-Authenticate") || "");
      throw new FerryError("unauthorized", why ? why[1] : "unknown, revoked or expired upload link");
    }
    if (answer.status !== 404) throw new FerryError("connection_lost", `the server answered ${answer.status}`);
  }

  /** A new upload of `file` into `dir`; its URL. */
  async create(file, dir) {
    const metadata = [`filename ${b64(file.name)}`];
    if (dir.length) metadata.push(`relativePath ${b64([...dir, file.name].join("/"))}`);
    if (file.type) metadata.push(`filetype ${b64(file.type)}`);
    const answer = await call(this.endpoint, {
      method: "POST",
      headers: { ...TUS, ...this.auth, "Upload-Length": String(file.size), "Upload-Metadata": metadata.join(",") },
    });
    if (answer.status !== 201) throw await failure(answer);
    return answer.headers.get("Location");
  }

  /** The durable offset of the upload at `url`; `null` if it is gone (not found, expired). */
  async offset(url) {
    const answer = await call(url, { method: "HEAD", headers: { ...TUS, ...this.auth } });
    if (answer.status === 404 || answer.status === 410) return null;
    if (!answer.ok) throw await failure(answer);
    return Number(answer.headers.get("Upload-Offset"));
  }

  /** Sends `body` at `offset`; the durable offset after it, and the published name once the
   * last byte is in. A 409 (another offset) is answered with the server's offset. */
  async patch(url, offset, body) {
    const answer = await call(url, {
      method: "PATCH",
      headers: {
        ...TUS, ...this.auth,
        "Upload-Offset": String(offset),
        "Content-Type": "application/offset+octet-stream",
      },
      body,
    });
    if (answer.status === 409 && answer.headers.get("Upload-Offset") !== null) {
      return { offset: Number(answer.headers.get("Upload-Offset")) };
    }
    if (answer.status === 423) throw new FerryError("chunk_in_progress", "the upload is busy; retrying");
    if (answer.status !== 204) throw await failure(answer);
    return {
      offset: Number(answer.headers.get("Upload-Offset")),
      published: answer.headers.get("Ferry-File-Name"),
    };
  }
}
