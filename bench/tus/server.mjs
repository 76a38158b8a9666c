// tus reference server for the benchmark: @tus/server with @tus/file-store on loopback.
// Usage: node server.mjs DIR  — prints "listening on 127.0.0.1:PORT".
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'
import http from 'node:http'

const dir = process.argv[2]
const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) })
const server = http.createServer((req, res) => tus.handle(req, res))
server.listen(0, '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`)
})
process.on('SIGTERM', () => server.close(() => process.exit(0)))
