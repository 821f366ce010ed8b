#!/usr/bin/env node
// Summarise a vitest JSON report (vitest run --reporter=json --outputFile=FILE).
//
//   node scripts/ci-summary.mjs .ci/vitest.json [--vitest-exit-code N]
//
// Prints details of failures first, then, as the LAST line, exactly
//   "N passed, N failed"            or
//   "N passed, N failed, N skipped" (only when something was skipped/todo).
// Exit status is 1 when any test failed, a test file failed to load/run,
// zero tests ran, the report is missing/unreadable, or --vitest-exit-code is
// non-zero; otherwise 0.
//
// A test file that fails before any of its tests run (import error, syntax
// error, throw at top level) is counted as one failed test, so such a
// failure can never hide behind "N passed, 0 failed".
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const args = process.argv.slice(2);
let file;
let vitestExit = 0;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--vitest-exit-code') vitestExit = Number(args[++i] ?? 1) || 0;
  else file = args[i];
}
file ??= '.ci/vitest.json';

const problems = [];
let passed = 0;
let failed = 0;
let skipped = 0;

let report;
try {
  report = JSON.parse(readFileSync(file, 'utf8'));
} catch (e) {
  problems.push(`no usable vitest report at ${file}: ${e instanceof Error ? e.message : e}`);
}

if (report) {
  const files = Array.isArray(report.testResults) ? report.testResults : [];
  for (const f of files) {
    const fname = f.name ? relative(process.cwd(), f.name) : '(unknown file)';
    const tests = Array.isArray(f.assertionResults) ? f.assertionResults : [];
    let fileFailed = 0;
    for (const t of tests) {
      const name = [...(t.ancestorTitles ?? []), t.title].filter(Boolean).join(' > ');
      switch (t.status) {
        case 'passed':
          passed++;
          break;
        case 'failed':
          failed++;
          fileFailed++;
          problems.push(`FAIL ${fname} > ${name}`);
          break;
        default: // skipped, pending, todo, disabled
          skipped++;
      }
    }
    if (f.status === 'failed' && fileFailed === 0) {
      failed++;
      const msg = String(f.message ?? '').split('\n')[0];
      problems.push(`FAIL ${fname} (file failed${msg ? `: ${msg}` : ''})`);
    }
  }
  // Cross-check the totals vitest itself reports.
  if (typeof report.numFailedTests === 'number' && report.numFailedTests > failed) {
    failed = report.numFailedTests;
  }
}

const ran = passed + failed;
if (report && ran === 0) problems.push('no tests ran');
if (vitestExit !== 0) problems.push(`vitest exited with status ${vitestExit}`);

for (const p of problems) console.log(p);
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`);
process.exitCode = failed > 0 || ran === 0 || vitestExit !== 0 || !report ? 1 : 0;
