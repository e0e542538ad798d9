// node-postgres (unnamed statements with text parameters, named prepared statements, pg-cursor,
// transactions) through writebehind-proxy, on pass-through tables and on the write-behind table
// TABLE.
//
// Usage: node driver.js PORT DIRECT_PORT TABLE (exit 0 = pass). With PORT = DIRECT_PORT the
// scenario runs straight against PostgreSQL (the reference: every expectation here is what
// PostgreSQL does); otherwise PORT is the proxy's and DIRECT_PORT observes PostgreSQL.
// TABLE must exist, be write-behind and empty:
//   (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text, tag varchar(8))
'use strict'
const assert = require('node:assert/strict')
const { Client } = require('pg')
const Cursor = require('pg-cursor')

const [port, directPort] = process.argv.slice(2, 4).map(Number)
const table = process.argv[4]
const throughProxy = port !== directPort

async function connect (p) {
  const c = new Client({ host: '127.0.0.1', port: p, user: 'postgres', database: 'postgres' })
  await c.connect()
  return c
}

async function expectError (sqlstate, promise) {
  try {
    await promise
  } catch (e) {
    assert.equal(e.code, sqlstate, `expected ${sqlstate}, got ${e.code}: ${e.message}`)
    return
  }
  assert.fail(`expected an error ${sqlstate}, got none`)
}

// A tiny deterministic generator (the same sequence on every run).
function rng (seed) {
  let s = seed >>> 0
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 4294967296
  }
}

async function passThrough (c) {
  const kinds = `${table}_kinds`
  await c.query(`DROP TABLE IF EXISTS ${kinds}`)
  await c.query(`CREATE TABLE ${kinds} (id int PRIMARY KEY, i int, t text, num numeric(12,3),
                 ts timestamptz, b bytea, flag bool)`)
  const ts = new Date('2024-02-29T23:59:58.123Z')
  const row = [1, 42, 'héllo', '12345.678', ts, Buffer.from([0, 255, 98]), true]
  const ins = `INSERT INTO ${kinds} VALUES ($1, $2, $3, $4, $5, $6, $7)`
  assert.equal((await c.query(ins, row)).rowCount, 1)
  assert.equal((await c.query(ins, [2, null, null, null, null, null, null])).rowCount, 1)
  const got = await c.query(`SELECT * FROM ${kinds} WHERE id = $1`, [1])
  assert.deepEqual(got.rows[0], { id: 1, i: 42, t: 'héllo', num: '12345.678', ts, b: row[5], flag: true })
  const nulls = await c.query({ name: 'kinds_by_id', text: `SELECT * FROM ${kinds} WHERE id = $1`, values: [2] })
  assert.deepEqual(Object.values(nulls.rows[0]), [2, null, null, null, null, null, null])
  const match = await c.query(
    `SELECT id FROM ${kinds} WHERE i = $1 AND t = $2 AND num = $3 AND ts = $4 AND b = $5 AND flag = $6`,
    row.slice(1))
  assert.deepEqual(match.rows, [{ id: 1 }])
  // Errors with their SQLSTATE; the session goes on.
  await expectError('23505', c.query(`INSERT INTO ${kinds} (id) VALUES ($1)`, [1]))
  await expectError('22012', c.query('SELECT 1 / $1::int', [0]))
  await expectError('22P02', c.query(`SELECT * FROM ${kinds} WHERE id = $1`, ['x']))
  await expectError('42P01', c.query('SELECT * FROM no_such_table'))
  // A named statement used again after an error.
  assert.equal((await c.query({ name: 'kinds_by_id', text: `SELECT * FROM ${kinds} WHERE id = $1`, values: [1] })).rows[0].t, 'héllo')
  // Transactions: rolled back leaves nothing, a failed one rolls back, committed stays.
  await c.query('BEGIN')
  await c.query(`INSERT INTO ${kinds} (id, t) VALUES ($1, $2)`, [10, 'gone'])
  assert.equal((await c.query(`SELECT count(*)::int AS n FROM ${kinds} WHERE id = 10`)).rows[0].n, 1)
  await c.query('ROLLBACK')
  await c.query('BEGIN')
  await expectError('23505', c.query(`INSERT INTO ${kinds} (id) VALUES ($1)`, [1]))
  await expectError('25P02', c.query('SELECT 1'))
  await c.query('ROLLBACK')
  await c.query('BEGIN')
  await c.query(`INSERT INTO ${kinds} (id) VALUES ($1)`, [12])
  await c.query('COMMIT')
  assert.equal((await c.query(`SELECT count(*)::int AS n FROM ${kinds} WHERE id IN (10, 12)`)).rows[0].n, 1)
  for (let k = 0; k < 100; k++) {
    await c.query({ name: 'kinds_ins', text: `INSERT INTO ${kinds} (id, i) VALUES ($1, $2)`, values: [100 + k, k] })
  }
  // A cursor: Execute with a row limit, Flush, portal suspended.
  const cur = c.query(new Cursor(`SELECT id FROM ${kinds} WHERE id >= $1 ORDER BY id`, [100]))
  const first = await cur.read(30)
  const second = await cur.read(100)
  await cur.close()
  assert.deepEqual([first.length, second.length, first[0].id, second[69].id], [30, 70, 100, 199])
}

async function writeBehind (c, observer) {
  const model = new Map() // id -> [n, note, tag]
  let acked = 0
  const rand = rng(7)
  const pick = (arr) => arr[Math.floor(rand() * arr.length)]
  const q = {
    ins: { name: 'wb_ins', text: `INSERT INTO ${table} (id, n, note) VALUES ($1, $2, $3)` },
    inc: { name: 'wb_inc', text: `UPDATE ${table} SET n = n + $1 WHERE id = $2` },
    note: { name: 'wb_note', text: `UPDATE ${table} SET note = $1, tag = $2 WHERE id = $3` },
    del: { name: 'wb_del', text: `DELETE FROM ${table} WHERE id = $1` },
    read: { name: 'wb_read', text: `SELECT n::int, note, tag FROM ${table} WHERE id = $1` }
  }
  const run = async (which, values, named = true) => {
    const r = named ? await c.query({ ...q[which], values }) : await c.query(q[which].text, values)
    return r
  }
  const read = async (id) => {
    const r = await run('read', [id])
    return r.rows.length ? [r.rows[0].n, r.rows[0].note, r.rows[0].tag] : undefined
  }

  for (let k = 1; k <= 100; k++) {
    const r = await run('ins', [k, 0, `k${k}`], k % 2 === 0)
    assert.equal(r.command + ' ' + r.rowCount, 'INSERT 1')
    model.set(k, [0, `k${k}`, null])
    acked++
  }
  for (let i = 0; i < 10; i++) await run('inc', [5, 1])
  model.get(1)[0] += 50
  acked += 10
  if (throughProxy) {
    const n = (await observer.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n
    assert.equal(n, 0, 'acknowledged writes must not have reached PostgreSQL yet')
  }
  assert.deepEqual(await read(1), [50, 'k1', null], 'read-your-writes')

  let nextId = 101
  for (let step = 0; step < 3000; step++) {
    const live = [...model.keys()]
    const r = rand()
    const named = step % 3 !== 0 // unnamed statements with text parameters too
    let res
    if (r < 0.6) {
      const k = pick(live)
      const d = Math.floor(rand() * 26) - 5
      res = await run('inc', [d, k], named)
      assert.equal(res.command + res.rowCount, 'UPDATE1')
      model.get(k)[0] += d
    } else if (r < 0.75) {
      const k = pick(live)
      const note = `s${step}`
      const tag = pick([null, 't', 'eight888'])
      res = await run('note', [note, tag, k], named)
      assert.equal(res.command + res.rowCount, 'UPDATE1')
      model.get(k)[1] = note
      model.get(k)[2] = tag
    } else if (r < 0.85) {
      const k = pick(live)
      res = await run('del', [k], named)
      assert.equal(res.command + res.rowCount, 'DELETE1')
      model.delete(k)
    } else {
      const k = nextId++
      const n = Math.floor(rand() * 1000)
      res = await run('ins', [k, n, null], named)
      assert.equal(res.command + res.rowCount, 'INSERT1')
      model.set(k, [n, null, null])
    }
    acked++
    if (step % 300 === 299) {
      const k = pick([...model.keys()])
      assert.deepEqual(await read(k), model.get(k), `key ${k}`)
      assert.equal(await read(nextId + 5), undefined)
    }
  }
  const keys = [...model.keys()].slice(0, 50)
  for (const k of keys) await run('inc', [3, k])
  for (const k of keys) model.get(k)[0] += 3
  acked += keys.length
  const sum = [...model.values()].reduce((s, v) => s + v[0], 0)
  assert.equal((await c.query(`SELECT sum(n)::int AS s FROM ${table}`)).rows[0].s, sum)

  // Validation errors with PostgreSQL's SQLSTATE; nothing of them applies.
  const k = keys[0]
  await expectError('23502', run('ins', [9999, null, 'x']))
  await expectError('23502', c.query(`UPDATE ${table} SET n = $1 WHERE id = $2`, [null, k]))
  await expectError('22001', run('note', ['x', 'ninechars', k]))
  await expectError('22P02', run('inc', ['abc', k]))
  await expectError('22P02', run('inc', [1, '1.5'], false))
  await expectError('22003', run('inc', [1, '2147483648']))
  await expectError('42703', c.query(`UPDATE ${table} SET nope = $1 WHERE id = $2`, [1, k]))
  // The named statements still work after their errors.
  assert.equal((await run('inc', [1, k])).rowCount, 1)
  model.get(k)[0] += 1
  acked++
  // Simple protocol (no parameters).
  assert.equal((await c.query(`UPDATE ${table} SET n = n + 1 WHERE id = ${k}`)).rowCount, 1)
  model.get(k)[0] += 1
  acked++

  // A transaction: its writes pass through, a rollback undoes them, a commit keeps them.
  await c.query('BEGIN')
  await run('inc', [1000, k])
  assert.deepEqual(await read(k), [model.get(k)[0] + 1000, ...model.get(k).slice(1)])
  await c.query('ROLLBACK')
  await c.query('BEGIN')
  await run('inc', [7, k])
  await c.query('COMMIT')
  model.get(k)[0] += 7
  assert.deepEqual(await read(k), model.get(k))

  // A cursor over the table (its barrier first).
  const cur = c.query(new Cursor(`SELECT id, n::int, note, tag FROM ${table} ORDER BY id`))
  const all = []
  for (;;) {
    const rows = await cur.read(500)
    if (!rows.length) break
    all.push(...rows)
  }
  await cur.close()
  const asMap = (rows) => new Map(rows.map((r) => [r.id, [r.n, r.note, r.tag]]))
  assert.deepEqual(asMap(all), model)
  await c.query('SELECT writebehind.flush()')
  const direct = await observer.query(`SELECT id, n::int, note, tag FROM ${table}`)
  assert.deepEqual(asMap(direct.rows), model, 'table (direct) differs from the model')
  assert.equal((await observer.query('SELECT count(*)::int AS n FROM writebehind.dead_letters')).rows[0].n, 0)
  return throughProxy ? acked : 0
}

async function ackedInStatus (observer, want) {
  let got
  for (let i = 0; i < 100; i++) {
    const r = await observer.query('SELECT acked::int FROM writebehind.status WHERE "table" = $1::regclass', [table])
    got = r.rows[0].acked
    if (got === want) return got
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return got
}

async function main () {
  const c = await connect(port)
  const observer = await connect(directPort)
  await passThrough(c)
  const want = await writeBehind(c, observer)
  const acked = await ackedInStatus(observer, want)
  assert.equal(acked, want, `writebehind.status acked ${acked}, expected ${want}`)
  await c.end()
  await observer.end()
  const version = require('pg/package.json').version
  console.log(`ok: node-postgres ${version}, ${throughProxy ? 'proxy' : 'direct'}, acked ${acked}`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
