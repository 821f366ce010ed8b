// fast-check is seeded (LORAFA_SEED, default fixed) so every failure reproduces; a failure prints
// the seed, the path and the shrunk counterexample. LORAFA_RUNS scales the case count (npm run fuzz).
import fc from 'fast-check';

export const FC_SEED = process.env.LORAFA_SEED ? Number(process.env.LORAFA_SEED) : 20231118;
export const FC_RUNS = process.env.LORAFA_RUNS ? Number(process.env.LORAFA_RUNS) : 60;

fc.configureGlobal({ seed: FC_SEED, numRuns: FC_RUNS, endOnFailure: false });
