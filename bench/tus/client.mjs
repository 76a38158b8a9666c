// tus reference client for the benchmarks: tus-js-client in Node, 8 MiB chunks, reading the
// file as a stream. Usage: node client.mjs FILE ENDPOINT [TOKEN]
// (ENDPOINT http://127.0.0.1:PORT/files/ or https://localhost:PORT/files/; with https the
// server's certificate comes in NODE_EXTRA_CA_CERTS; TOKEN becomes `Authorization: Bearer`.)
// Prints the upload URL when done; exits 1 on error.
import * as tus from 'tus-js-client'
import fs from 'node:fs'

const [file, endpoint, token] = process.argv.slice(2)
const size = fs.statSync(file).size
const upload = new tus.Upload(fs.createReadStream(file, { highWaterMark: 8 << 20 }), {
  endpoint,
  chunkSize: 8 << 20,
  uploadSize: size,
  retryDelays: [0, 1000, 3000],
  headers: token ? { Authorization: `Bearer ${token}` } : {},
  metadata: { filename: file.split('/').pop() },
  onError: (e) => { console.error(`tus upload failed: ${e}`); process.exit(1) },
  onSuccess: () => { console.log(upload.url); process.exit(0) },
})
upload.start()
