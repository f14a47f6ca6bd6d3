#!/usr/bin/env node
// Sums Nsight Compute's per-instruction warp stall samples by SASS opcode, from the source page
// that device-run.sh's `ncu` step exports with NCU_SOURCE=1 (ncu-source-m<M>.csv): which kinds of
// instruction the warps were waiting on, and what share of the instructions each kind is.
//   node kernels/gpu/ncu-stalls.mjs FILE.csv [TOP]
// Columns are found by their header names, which ncu versions word alike: the SASS text ("Source"),
// the samples ("Warp Stall Sampling (All Samples)") and the executed count ("Instructions Executed").

import { readFileSync } from 'node:fs';

// One CSV line into fields (quoted fields may hold commas and doubled quotes).
function splitCsv(line) {
  const fields = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') {
      fields.push(cur);
      cur = '';
    } else cur += ch;
  }
  fields.push(cur);
  return fields;
}

// The opcode of a SASS line: predicate guard and modifiers dropped ("@!P0 LDS.U.128 R4, [R2]" -> "LDS").
function opcodeOf(sass) {
  const words = sass.trim().split(/\s+/);
  const op = words[0]?.startsWith('@') ? words[1] : words[0];
  return (op ?? '').split('.')[0].replace(/;$/, '');
}

const [file, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: node kernels/gpu/ncu-stalls.mjs FILE.csv [TOP]');
  process.exit(2);
}
const lines = readFileSync(file, 'utf8').split(/\r?\n/);
const headerAt = lines.findIndex((l) => l.includes('Warp Stall Sampling'));
if (headerAt < 0) {
  console.error(
    `${file}: no "Warp Stall Sampling" column: not an ncu source-page CSV (its first line: ${lines[0]})`,
  );
  process.exit(1);
}
const header = splitCsv(lines[headerAt]);
const col = (re) => header.findIndex((h) => re.test(h));
const srcCol = col(/^Source$/);
const samplesCol = col(/^Warp Stall Sampling \(All/);
const execCol = col(/^Instructions Executed$/);
if (srcCol < 0 || samplesCol < 0) {
  console.error(
    `${file}: columns not found (Source ${srcCol}, samples ${samplesCol}) in: ${header.join(' | ')}`,
  );
  process.exit(1);
}
const byOp = new Map();
let samples = 0;
let executed = 0;
for (const line of lines.slice(headerAt + 1)) {
  if (!line.trim()) continue;
  const f = splitCsv(line);
  const op = opcodeOf(f[srcCol] ?? '');
  if (!op) continue;
  const s = Number(f[samplesCol]) || 0;
  const e = execCol >= 0 ? Number(f[execCol]) || 0 : 0;
  const row = byOp.get(op) ?? { samples: 0, executed: 0, lines: 0 };
  row.samples += s;
  row.executed += e;
  row.lines += 1;
  byOp.set(op, row);
  samples += s;
  executed += e;
}
const pct = (a, b) => (b ? ((100 * a) / b).toFixed(1) : '-').padStart(6);
const rows = [...byOp].sort((a, b) => b[1].samples - a[1].samples).slice(0, Number(topArg) || 25);
console.log(`${file}: ${samples} stall samples, ${executed} instructions executed`);
console.log('opcode          samples %   executed %   SASS lines');
for (const [op, r] of rows)
  console.log(`${op.padEnd(14)} ${pct(r.samples, samples)}      ${pct(r.executed, executed)}   ${r.lines}`);
