// tus reference client for the benchmark: tus-js-client in Node, 8 MiB chunks, reading the
// file as a stream. Usage: node client.mjs FILE http://127.0.0.1:PORT/files/
// Prints the upload URL when done; exits 1 on error.
import * as tus from 'tus-js-client'
import fs from 'node:fs'

const [file, endpoint] = process.argv.slice(2)
const size = fs.statSync(file).size
const upload = new tus.Upload(fs.createReadStream(file, { highWaterMark: 8 << 20 }), {
  endpoint,
  chunkSize: 8 << 20,
  uploadSize: size,
  retryDelays: [0, 1000, 3000],
  metadata: { filename: file.split('/').pop() },
  onError: (e) => { console.error(`tus upload failed: ${e}`); process.exit(1) },
  onSuccess: () => { console.log(upload.url); process.exit(0) },
})
upload.start()
