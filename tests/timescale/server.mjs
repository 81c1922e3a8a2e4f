// TimescaleDB for the conformance test (tests/integration/test_timescaledb.py).
//
// PGlite (PostgreSQL 17.5 compiled to WASM, here the build with TimescaleDB 2.23) served over
// the PostgreSQL wire protocol by pglite-socket, in memory, on 127.0.0.1.
//
//   node server.mjs [PORT] [--watch-stdin]      (PORT also from ENVMON_PGLITE_PORT; 0 = any)
//
// Prints one line "envmon-pglite ready 127.0.0.1:<port> ..." when it accepts connections,
// and stops on SIGTERM or SIGINT (and, with --watch-stdin, when its stdin closes, so it never
// outlives the test process that started it). Any user name, database name and password are
// accepted (a password must be given: psycopg is asked for one); the database is PGlite's one.
//   ENVMON_PGLITE_QUEUE_TIMEOUT_MS  how long a connection may wait for the one before it to
//                                   close before it is refused (default 10000)
//   ENVMON_PGLITE_DEBUG=1           log every connection
//
// PGlite is one PostgreSQL backend: it serves one client connection at a time and queues the
// others. Around pglite-socket's PGLiteSocketHandler this file adds what a real server does
// and PGLiteSocketServer 0.0.19 does not:
//   * answers SSLRequest / GSSENCRequest with "N" (libpq's default sslmode=prefer then works
//     with a plain postgresql:// URL), and drops CancelRequest connections;
//   * hands the backend whole protocol messages only: a TCP read can end in the middle of
//     one (large statements, pipelined clients), and a partial message derails the backend;
//   * gives every connection a fresh session: when a client disconnects, its open
//     transaction is rolled back and DISCARD ALL drops its prepared statements, temporary
//     tables and settings (otherwise psycopg's next connection collides with the previous
//     one's "_pg3_0" prepared statement, and an unfinished transaction leaks into it), then
//     restores the session settings PGlite made at start (search_path=public).

import { EventEmitter } from 'node:events'
import { createServer } from 'node:net'

import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketHandler } from '@electric-sql/pglite-socket'

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const SYNC = Uint8Array.from([0x53, 0, 0, 0, 4]) // 'S', length 4

const args = process.argv.slice(2)
const portArg = args.find((a) => /^\d+$/.test(a)) ?? process.env.ENVMON_PGLITE_PORT ?? '5432'
const port = Number(portArg)
const host = '127.0.0.1'
const debug = Boolean(process.env.ENVMON_PGLITE_DEBUG)
const queueTimeoutMs = Number(process.env.ENVMON_PGLITE_QUEUE_TIMEOUT_MS ?? 10000)

const log = (...m) => console.log('[pglite]', ...m)
const trace = (...m) => debug && console.log('[pglite:debug]', ...m)

/** A socket as PGLiteSocketHandler sees it, emitting only whole protocol messages. */
class FramedSocket extends EventEmitter {
  constructor(socket, startup) {
    super()
    this.socket = socket
    this.startup = startup // the StartupMessage, already read (untyped)
    this.pending = Buffer.alloc(0)
    this.remoteAddress = socket.remoteAddress
    this.remotePort = socket.remotePort
  }

  get writable() {
    return this.socket.writable
  }

  write(data, cb) {
    return this.socket.write(data, cb)
  }

  end() {
    this.socket.end()
  }

  destroy() {
    this.socket.destroy()
  }

  /** Start the flow of messages to the listeners (after the handler attached). */
  open(leftover) {
    this.socket.on('close', () => this.emit('close'))
    this.socket.on('error', (err) => {
      if (this.listenerCount('error')) this.emit('error', err) // none once detached
    })
    this.socket.on('data', (chunk) => this.receive(chunk))
    this.emit('data', this.startup)
    if (leftover.length) this.receive(leftover)
  }

  receive(chunk) {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk
    let end = 0
    while (this.pending.length - end >= 5) {
      const size = 1 + this.pending.readUInt32BE(end + 1)
      if (this.pending.length - end < size) break
      end += size
    }
    if (end === 0) return
    const whole = this.pending.subarray(0, end)
    this.pending = this.pending.subarray(end)
    this.emit('data', whole)
  }
}

/** Read the untyped startup packets: answer SSL/GSS requests, return the StartupMessage. */
function readStartup(socket) {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0)
    const done = (value) => {
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.off('error', onClose)
      resolve(value)
    }
    const onClose = () => done(null)
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk])
      while (buf.length >= 8) {
        const size = buf.readUInt32BE(0)
        if (size < 8 || size > 10_000) {
          socket.destroy()
          return done(null)
        }
        if (buf.length < size) return
        const code = buf.readUInt32BE(4)
        const packet = buf.subarray(0, size)
        buf = buf.subarray(size)
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
          socket.write('N')
          continue
        }
        if (code === CANCEL_REQUEST) {
          socket.destroy() // nothing to cancel: statements run to completion
          return done(null)
        }
        return done({ startup: packet, leftover: buf })
      }
    }
    socket.on('data', onData)
    socket.on('close', onClose)
    socket.on('error', onClose)
  })
}

/** Leave the backend as a new connection expects it. */
async function resetSession(db, sessionSettings) {
  await db.execProtocolRaw(SYNC) // ends an extended-protocol exchange cut short
  await db.exec('ROLLBACK') // a transaction the client left open (a warning if none)
  await db.exec('DISCARD ALL')
  // RESET ALL (in DISCARD ALL) returns settings to their command-line values, but PGlite
  // starts its backend with search_path=pg_catalog and then sets search_path=public for the
  // session: without this, the next client would create its tables in pg_catalog.
  for (const { name, setting } of sessionSettings) {
    await db.query('SELECT set_config($1, $2, false)', [name, setting])
  }
}

const started = Date.now()
const db = await PGlite.create({ extensions: { timescaledb } })
const info = await db.query(
  `SELECT current_setting('server_version') AS pg,
          (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb') AS ts`,
)
const { pg, ts } = info.rows[0]
const sessionSettings = (
  await db.query("SELECT name, setting FROM pg_settings WHERE source = 'session'")
).rows
if (!ts) {
  console.error('[pglite] the timescaledb extension is not available in this PGlite build')
  process.exit(2)
}

let queue = Promise.resolve() // connections are served one after another
let connections = 0

async function serve(socket, startup, leftover) {
  const id = ++connections
  if (socket.destroyed) return
  const framed = new FramedSocket(socket, startup)
  const closed = new Promise((resolve) => socket.once('close', resolve))
  const handler = new PGLiteSocketHandler({ db, closeOnDetach: true, debug })
  handler.addEventListener('error', (e) => trace(`connection ${id} error`, e.detail))
  await handler.attach(framed)
  trace(`connection ${id} attached`)
  framed.open(leftover)
  await closed
  handler.detach(false)
  try {
    await resetSession(db, sessionSettings)
  } catch (err) {
    console.error(`[pglite] resetting the session after connection ${id} failed:`, err)
  }
  trace(`connection ${id} done`)
}

/** A FATAL ErrorResponse, as a server sends it before closing a connection it refuses. */
function fatal(code, message) {
  const fields = Buffer.concat(
    [
      ['S', 'FATAL'],
      ['V', 'FATAL'],
      ['C', code],
      ['M', message],
    ].map(([k, v]) => Buffer.from(`${k}${v}\0`)),
  )
  const head = Buffer.alloc(5)
  head.write('E', 0)
  head.writeUInt32BE(4 + fields.length + 1, 1)
  return Buffer.concat([head, fields, Buffer.from([0])])
}

const server = createServer(async (socket) => {
  socket.setNoDelay(true)
  const first = await readStartup(socket)
  if (first === null) return
  // A client that waits for the one connection longer than this is refused with a clear
  // error instead of hanging: with PGlite it means some client holds a connection open
  // (a connection pool, an engine not disposed) while another one connects.
  let refused = false
  const timer = setTimeout(() => {
    refused = true
    log(`refused a connection that waited ${queueTimeoutMs} ms for the current one to close`)
    socket.end(
      fatal(
        '53300',
        `PGlite serves one connection at a time and another client kept its connection ` +
          `open for more than ${queueTimeoutMs} ms`,
      ),
    )
  }, queueTimeoutMs)
  queue = queue
    .then(() => {
      clearTimeout(timer)
      if (refused) return undefined
      return serve(socket, first.startup, first.leftover)
    })
    .catch((err) => {
      console.error('[pglite] connection failed:', err)
      socket.destroy()
    })
})

await new Promise((resolve, reject) => {
  server.once('error', reject)
  server.listen(port, host, resolve)
})
const bound = server.address().port

let stopping = false
async function stop(why) {
  if (stopping) return
  stopping = true
  log(`stopping (${why})`)
  server.close()
  // An attached client holds PGlite's lock, so close() could wait for ever: give it a second.
  const timeout = new Promise((resolve) => setTimeout(resolve, 1000))
  await Promise.race([db.close().catch(() => {}), timeout])
  process.exit(0)
}
// pglite-socket rejects its lock promise when a client's socket fails (a reset connection),
// and nothing catches that rejection: log it rather than let Node.js end the process.
process.on('unhandledRejection', (err) => log('unhandled rejection (a connection failed):', err))
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
if (args.includes('--watch-stdin')) {
  process.stdin.on('end', () => stop('stdin closed'))
  process.stdin.on('error', () => stop('stdin error'))
  process.stdin.resume()
}

console.log(
  `envmon-pglite ready ${host}:${bound} postgresql=${pg} timescaledb=${ts} ` +
    `started_in_ms=${Date.now() - started}`,
)
