// Ferry's protocol for browsers (docs/protocol.md §9): the same frames as the native client,
// carried on a WebTransport session. A frame is a 4-byte big-endian length and a JSON object.
// This module knows the wire; app.js knows the page.

export const PROTOCOL_VERSION = 9;
const MAX_FRAME = 65536;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** The bytes of one frame. */
export function frameBytes(frame) {
  const body = encoder.encode(JSON.stringify(frame));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/** Lowercase hex of bytes. */
export function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return out;
}

/** SHA-256 of bytes, as lowercase hex. */
export async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

/** The content hash (§3.6): SHA-256 over the chunks' raw SHA-256s, in index order. */
export async function contentHash(digestsHex) {
  const all = new Uint8Array(32 * digestsHex.length);
  digestsHex.forEach((d, i) => all.set(unhex(d), 32 * i));
  return sha256Hex(all);
}

/** An error the server sent (`error` or `reject`): its code and message. */
export class FerryError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * One WebTransport session: `hello`, requests matched to their replies by `req`, pushed
 * frames (`ack`, `reject`, `detached`, `notice`, `error` without `req`) to `onPush`, and chunk
 * streams.
 */
export class Session {
  static async open({ url, hashes, token, onPush, onClose }) {
    const options = {};
    if (hashes && hashes.length) {
      options.serverCertificateHashes = hashes.map((h) => ({ algorithm: "sha-256", value: unhex(h) }));
    }
    const transport = new WebTransport(url, options);
    await transport.ready;
    const session = new Session(transport, onPush);
    const stream = await transport.createBidirectionalStream();
    session.writer = stream.writable.getWriter();
    session.readLoop(stream.readable.getReader());
    transport.closed.then(
      (info) => session.ended(new FerryError(codeOf(info.closeCode), info.reason || "the session closed")),
      (e) => session.ended(new FerryError("connection_lost", String(e && e.message ? e.message : e))),
    );
    session.onClose = onClose;
    try {
      session.welcome = await session.exchange({ type: "hello", version: PROTOCOL_VERSION, token }, "welcome");
    } catch (e) {
      session.close();
      throw e;
    }
    return session;
  }

  constructor(transport, onPush) {
    this.transport = transport;
    this.onPush = onPush || (() => {});
    this.nextReq = 1;
    this.waiting = new Map(); // req -> {resolve, reject}
    this.first = null; // the pending hello
    this.closedWith = null;
  }

  /** Sends `frame` and waits for its reply (an `error` reply rejects with a FerryError). */
  request(frame) {
    const req = this.nextReq++;
    return new Promise((resolve, reject) => {
      if (this.closedWith) return reject(this.closedWith);
      this.waiting.set(req, { resolve, reject });
      this.writer.write(frameBytes({ ...frame, req })).catch((e) => {
        this.waiting.delete(req);
        reject(new FerryError("connection_lost", String(e)));
      });
    });
  }

  /** `hello`: its answer has no `req`. */
  exchange(frame, expected) {
    return new Promise((resolve, reject) => {
      this.first = { resolve, reject, expected };
      this.writer.write(frameBytes(frame)).catch(reject);
    });
  }

  /** One chunk on its own unidirectional stream: header, payload, `chunk_end`, FIN. */
  async sendChunk(uploadId, index, payload, digestHex) {
    // Chromium refuses a new stream at once when the server's stream credit is used up (the
    // credit comes back as streams finish): wait and try again, a bounded number of times.
    let stream = null;
    for (let attempt = 0; !stream; attempt++) {
      try {
        stream = await this.transport.createUnidirectionalStream();
      } catch (e) {
        if (this.closedWith || attempt >= 200) throw this.closedWith || e;
        await new Promise((ok) => setTimeout(ok, 25));
      }
    }
    const writer = stream.getWriter();
    try {
      await writer.write(frameBytes({ type: "chunk", upload_id: uploadId, index, size: payload.byteLength }));
      await writer.write(new Uint8Array(payload));
      await writer.write(frameBytes({ type: "chunk_end", sha256: digestHex }));
      await writer.close();
    } catch (e) {
      // Stopped by the server (code 0: it holds the chunk already), or the session ended: the
      // `ack` or `reject` on the control stream says what happened, never the stream.
    }
  }

  close() {
    try {
      this.transport.close({ closeCode: 0, reason: "done" });
    } catch (e) {}
  }

  async readLoop(reader) {
    let buf = new Uint8Array(0);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const joined = new Uint8Array(buf.length + value.length);
        joined.set(buf);
        joined.set(value, buf.length);
        buf = joined;
        while (buf.length >= 4) {
          const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
          if (len > MAX_FRAME) throw new Error("frame too large");
          if (buf.length < 4 + len) break;
          const frame = JSON.parse(decoder.decode(buf.subarray(4, 4 + len)));
          buf = buf.slice(4 + len);
          this.dispatch(frame);
        }
      }
      this.lost(new FerryError("connection_lost", "the server ended the control stream"));
    } catch (e) {
      this.lost(new FerryError("connection_lost", String(e && e.message ? e.message : e)));
    }
  }

  /** The control stream failed: the session's close code, if it comes within a moment, is the
   * better reason (Firefox reports the stream's error before the close code a revocation
   * sends, which would read as a lost connection). */
  lost(error) {
    setTimeout(() => this.ended(error), 500);
  }

  dispatch(frame) {
    if (this.first) {
      const first = this.first;
      this.first = null;
      if (frame.type === first.expected) first.resolve(frame);
      else if (frame.type === "error") first.reject(new FerryError(frame.code, frame.message));
      else first.reject(new FerryError("unexpected_frame", `expected ${first.expected}, got ${frame.type}`));
      return;
    }
    if (frame.req !== undefined && frame.req !== null && this.waiting.has(frame.req)) {
      const { resolve, reject } = this.waiting.get(frame.req);
      this.waiting.delete(frame.req);
      if (frame.type === "error") reject(new FerryError(frame.code, frame.message));
      else resolve(frame);
      return;
    }
    this.onPush(frame);
  }

  ended(error) {
    if (this.closedWith) return;
    // A server `error` pushed just before the close is the better reason.
    this.closedWith = error;
    if (this.first) this.first.reject(error);
    for (const { reject } of this.waiting.values()) reject(error);
    this.waiting.clear();
    if (this.onClose) this.onClose(error);
  }
}

/** Error codes by their QUIC number (§6), for session close codes. */
const CODES = [
  "frame_too_large", "bad_utf8", "bad_json", "unknown_type", "truncated_frame", "bad_field",
  "unexpected_frame", "unsupported_version", "unauthorized", "not_authenticated", "not_found",
  "invalid_name", "file_too_large", "bad_chunk_size", "index_out_of_range", "wrong_chunk_size",
  "bad_digest", "digest_mismatch", "chunk_in_progress", "short_payload", "long_payload",
  "taken_over", "not_attached", "bad_state", "incomplete", "file_digest_mismatch",
  "storage_error", "storage_full", "shutting_down", "internal", "insufficient_storage",
  "too_many_uploads", "quota_exceeded", "too_many_connections", "expired", "stream_timeout",
  "token_revoked", "control_stream_full", "name_exhausted", "already_exists", "refused",
  "too_fragmented",
];

export function codeOf(number) {
  return CODES[number - 1] || "connection_lost";
}

/** Chunk rejections after which the chunk is sent again (§3.5); every other one is final. */
export const RETRY = new Set([
  "digest_mismatch", "chunk_in_progress", "short_payload", "storage_error", "storage_full", "stream_timeout",
  "too_fragmented",
]);

/** What to tell a person for each code. */
export const EXPLAIN = {
  unauthorized: "This upload link is not valid (unknown, revoked or expired).",
  token_revoked: "This upload link was revoked.",
  unsupported_version: "The server speaks another version; reload the page.",
  quota_exceeded: "This link (or the account behind it) has no room for this file.",
  file_too_large: "The file is larger than the server accepts.",
  too_many_uploads: "Too many uploads are in progress for this account; try again later.",
  too_many_connections: "The server is busy; try again later.",
  insufficient_storage: "The server has no room for this file.",
  invalid_name: "The server cannot store a file of this name.",
  already_exists: "A file of this name exists already.",
  name_exhausted: "No free name is left for this file.",
  refused: "The server refused this file.",
  expired: "The upload was idle too long and was removed; it starts again.",
  file_digest_mismatch: "The file changed while it was sent; send it again.",
  shutting_down: "The server restarted and could not be reached again. Press Upload to go on: what it holds is not sent again.",
  connection_lost: "The server could not be reached, and the page stopped trying. Press Upload to go on: what it holds is not sent again.",
  no_link: "Open this page through the upload link you were sent.",
};
