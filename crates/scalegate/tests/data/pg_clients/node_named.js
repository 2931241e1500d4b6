// node-postgres through the pooler: named (prepared) queries reused across pool connections and
// transactions, with values checked, plus a rolled-back transaction.
// Usage: node node_named.js PORT  (NODE_PATH points at the npm folder's node_modules)
const { Pool } = require('pg');

async function main(port) {
  const pool = new Pool({ host: '127.0.0.1', port, user: 'postgres', database: 'app', max: 4 });
  await pool.query('DROP TABLE IF EXISTS nd_t');
  await pool.query('CREATE TABLE nd_t (id int PRIMARY KEY, v text)');
  const work = [];
  for (let w = 0; w < 4; w++) {
    work.push((async () => {
      for (let i = 0; i < 40; i++) {
        const r = await pool.query({ name: 'add', text: 'SELECT $1::int + $2::int AS v', values: [w, i] });
        if (r.rows[0].v !== w + i) throw new Error(`add ${w}+${i} = ${r.rows[0].v}`);
        const t = await pool.query({ name: 'cat', text: "SELECT $1::text || '/' || $2::text AS v", values: [`${w}`, `${i}`] });
        if (t.rows[0].v !== `${w}/${i}`) throw new Error(`cat ${t.rows[0].v}`);
      }
    })());
  }
  await Promise.all(work);
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query({ name: 'ins', text: 'INSERT INTO nd_t VALUES ($1, $2)', values: [1, 'a'] });
    await c.query('ROLLBACK');
    await c.query({ name: 'ins', text: 'INSERT INTO nd_t VALUES ($1, $2)', values: [2, 'b'] });
    const n = await c.query({ name: 'count', text: 'SELECT count(*)::int AS n, max(id) AS m FROM nd_t' });
    if (n.rows[0].n !== 1 || n.rows[0].m !== 2) throw new Error(`count ${JSON.stringify(n.rows)}`);
  } finally {
    c.release();
  }
  await pool.end();
  console.log('ok');
}

main(Number(process.argv[2])).catch((e) => { console.error(e); process.exit(1); });
