// tus reference server for the benchmark: @tus/server with @tus/file-store on loopback.
// Usage: node server.mjs DIR [HOST]  — prints "listening on HOST:PORT" (HOST 127.0.0.1 unless
// given; bench/lossy.sh listens inside a network namespace).
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'
import http from 'node:http'

const dir = process.argv[2]
const host = process.argv[3] || '127.0.0.1'
const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) })
const server = http.createServer((req, res) => tus.handle(req, res))
server.listen(0, host, () => {
  console.log(`listening on ${host}:${server.address().port}`)
})
process.on('SIGTERM', () => server.close(() => process.exit(0)))
