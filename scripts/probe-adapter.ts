/**
 * Print what WebGPU adapter Dawn finds on this machine.
 *
 *   npx tsx scripts/probe-adapter.ts          human-readable report
 *   npx tsx scripts/probe-adapter.ts --json   the AdapterReport as JSON
 *
 * Exit status: 0 when an adapter was found, 1 when not (reason and fix are
 * printed), so scripts/setup.sh can branch on it.
 */
import { formatAdapterReport, probeAdapter } from '../src/runtime/device.ts';

const report = await probeAdapter();
if (process.argv.includes('--json')) {
  console.log(JSON.stringify(report, null, 2));
} else {
  console.log(formatAdapterReport(report));
}
process.exitCode = report.ok ? 0 : 1;
