// tus reference server for the benchmarks: @tus/server with @tus/file-store on loopback.
// Usage: node server.mjs DIR [HOST] [CERT KEY]  — prints "listening on HOST:PORT" (HOST
// 127.0.0.1 unless given; bench/lossy.sh listens inside a network namespace). With CERT and
// KEY (PEM files) it serves HTTPS, for a comparison with TLS on both sides (bench/tus.py).
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'
import http from 'node:http'
import https from 'node:https'
import fs from 'node:fs'

const [dir, hostArg, cert, key] = process.argv.slice(2)
const host = hostArg || '127.0.0.1'
const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory: dir }),
  // Behind Node's https the request does not say it came over TLS: name the scheme.
  ...(cert ? { generateUrl: (req, { host, path, id }) => `https://${host}${path}/${id}` } : {}),
})
const handler = (req, res) => tus.handle(req, res)
const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handler)
  : http.createServer(handler)
server.listen(0, host, () => {
  console.log(`listening on ${host}:${server.address().port}`)
})
process.on('SIGTERM', () => server.close(() => process.exit(0)))
