// tus-js-client (npm) in Node against ferryd's tus endpoint, for the end-to-end tests
// (tests/tests/e2e/tus.rs). One upload per run; what it does comes from the environment:
//
//   TUS_ENDPOINT  https://127.0.0.1:PORT/files/
//   TUS_FILE      the file to upload
//   TUS_TOKEN     the bearer token (or an upload link's grant)
//   TUS_MODE      plain | stop | resume | checksum | parallel | defer
//   TUS_STATE     where `stop` writes the upload's URL and `resume` reads it
//   TUS_STOP_AT   `stop`: the PATCH body is paced (1 MiB per 20 ms), and once this many bytes
//                 of it were handed over the process kills itself (SIGKILL, in the middle of
//                 its PATCH: a crash)
//   TUS_CHUNK     chunkSize (bytes per PATCH); unset: the whole rest in one PATCH
//
// The server's self-signed certificate is trusted through NODE_EXTRA_CA_CERTS. The last line
// of stdout is JSON: {"url": …, "offsetAtStart": …} (offsetAtStart: where the upload began
// sending in this process, from tus-js-client's first progress report).
"use strict";
const fs = require("fs");
const crypto = require("crypto");
const tus = require("tus-js-client");

const env = process.env;
const mode = env.TUS_MODE || "plain";
const file = env.TUS_FILE;
const size = fs.statSync(file).size;

// Adds `Upload-Checksum: sha256 …` to every PATCH, computed over the exact body sent: a
// wrapper around tus-js-client's own HTTP stack (its documented extension point).
class ChecksumStack {
  constructor(inner) {
    this.inner = inner;
  }
  createRequest(method, url) {
    const request = this.inner.createRequest(method, url);
    if (method !== "PATCH") return request;
    const send = request.send.bind(request);
    request.send = async (body) => {
      const bytes = await toBuffer(body);
      const sum = crypto.createHash("sha256").update(bytes).digest("base64");
      request.setHeader("Upload-Checksum", `sha256 ${sum}`);
      return send(bytes);
    };
    return request;
  }
  getName() {
    return "ChecksumStack";
  }
}

// `stop`: the PATCH body goes out 1 MiB every 20 ms, and the process kills itself (SIGKILL) as
// soon as TUS_STOP_AT bytes of it were handed to the request — in the body's own count, not
// tus-js-client's progress events (throttled to one per 100 ms: on a fast or loaded machine the
// whole body had left before the first one fired).
class StopStack {
  constructor(inner, stopAt) {
    this.inner = inner;
    this.stopAt = stopAt;
  }
  createRequest(method, url) {
    const request = this.inner.createRequest(method, url);
    if (method !== "PATCH") return request;
    const send = request.send.bind(request);
    const stopAt = this.stopAt;
    request.send = async (body) => {
      const bytes = await toBuffer(body);
      const { Readable } = require("stream");
      let at = 0;
      const paced = new Readable({
        read() {
          if (at >= bytes.length) return this.push(null);
          const piece = bytes.subarray(at, at + (1 << 20));
          at += piece.length;
          setTimeout(() => {
            this.push(piece);
            if (at >= stopAt) process.kill(process.pid, "SIGKILL");
          }, 20);
        },
      });
      return send(paced);
    };
    return request;
  }
  getName() {
    return "StopStack";
  }
}

async function toBuffer(body) {
  if (body == null) return Buffer.alloc(0);
  if (Buffer.isBuffer(body) || body instanceof Uint8Array) return Buffer.from(body);
  const parts = [];
  for await (const part of body) parts.push(Buffer.from(part));
  return Buffer.concat(parts);
}

function options() {
  const o = {
    endpoint: env.TUS_ENDPOINT,
    headers: { Authorization: `Bearer ${env.TUS_TOKEN}` },
    metadata: { filename: require("path").basename(file), filetype: "application/octet-stream" },
    retryDelays: [0, 500, 1000],
    removeFingerprintOnSuccess: true,
  };
  if (env.TUS_CHUNK) o.chunkSize = Number(env.TUS_CHUNK);
  if (mode === "checksum") o.httpStack = new ChecksumStack(new tus.DefaultHttpStack());
  if (mode === "stop") o.httpStack = new StopStack(new tus.DefaultHttpStack(), Number(env.TUS_STOP_AT));
  if (mode === "parallel") o.parallelUploads = 4;
  if (mode === "resume") o.uploadUrl = fs.readFileSync(env.TUS_STATE, "utf8").trim();
  if (mode === "defer") {
    o.uploadLengthDeferred = true;
    o.chunkSize = o.chunkSize || 4 << 20;
  }
  return o;
}

function main() {
  // Deferred: a stream of unknown length; otherwise the file's bytes.
  // A pipe (not an fs.ReadStream, which tus-js-client reads as a file of known size).
  const input =
    mode === "defer"
      ? fs.createReadStream(file).pipe(new (require("stream").PassThrough)())
      : fs.readFileSync(file);
  let offsetAtStart = null;
  const upload = new tus.Upload(input, {
    ...options(),
    onUploadUrlAvailable() {
      if (mode === "stop") fs.writeFileSync(env.TUS_STATE, upload.url);
    },
    onProgress(sent) {
      if (offsetAtStart === null) offsetAtStart = sent;

    },
    onError(error) {
      console.error(`tus error: ${error}`);
      process.exit(1);
    },
    onSuccess() {
      console.log(JSON.stringify({ url: upload.url, offsetAtStart }));
      process.exit(0);
    },
  });
  upload.start();
}

main();
