// quietly() (src/runtime/gpu.ts): while lorafa awaits a GPU promise, Dawn's Node bindings
// reschedule their event polling through the global setImmediate, a busy loop that takes a core
// from lavapipe. quietly swaps in a 1 ms timer past the first millisecond and must put the
// original back however the wait ends. Simulated here with a poller written the way the bindings
// poll (look setImmediate up on the global object on every reschedule), no GPU needed.
import { describe, expect, it } from 'vitest';
import { quietly } from '../src/runtime/gpu.ts';

/** Polls like Dawn's AsyncRunner for `ms`; resolves to the number of polls after the first 5 ms. */
function poller(ms: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let polls = 0;
    const tick = () => {
      const t = performance.now() - t0;
      if (t > 5) polls++;
      if (t > ms) resolve(polls);
      else (globalThis as { setImmediate: typeof setImmediate }).setImmediate(tick);
    };
    globalThis.setImmediate(tick);
  });
}

describe('quietly', () => {
  it('past its first millisecond a wait polls about once a millisecond, not hundreds of times', async () => {
    const spinning = await poller(60);
    const quiet = await quietly(() => poller(60));
    // 55 ms: spinning on setImmediate manages hundreds of polls a millisecond; a 1 ms timer ≤ 55.
    expect(spinning).toBeGreaterThan(1000);
    expect(quiet).toBeLessThanOrEqual(60);
  });

  it('clearImmediate cancels a callback scheduled during a wait, whichever way it was scheduled', async () => {
    let ran = 0;
    await quietly(async () => {
      globalThis.clearImmediate(globalThis.setImmediate(() => ran++)); // within the first ms: an immediate
      await new Promise((r) => setTimeout(r, 5));
      globalThis.clearImmediate(globalThis.setImmediate(() => ran++)); // past it: a timer
      await new Promise((r) => setTimeout(r, 10));
    });
    expect(ran).toBe(0);
  });

  it('puts the original setImmediate and clearImmediate back after a resolved, a rejected and nested waits', async () => {
    const original = globalThis.setImmediate;
    const originalClear = globalThis.clearImmediate;
    await quietly(() => new Promise((r) => setTimeout(r, 5)));
    expect(globalThis.setImmediate).toBe(original);
    await expect(quietly(() => new Promise((_, reject) => setTimeout(() => reject(new Error('lost device')), 5)))).rejects.toThrow('lost device');
    expect(globalThis.setImmediate).toBe(original);
    let inner: typeof setImmediate | undefined;
    await Promise.all([
      quietly(() => new Promise((r) => setTimeout(r, 20))),
      quietly(async () => {
        await new Promise((r) => setTimeout(r, 5));
        inner = globalThis.setImmediate;
      }),
    ]);
    expect(inner).not.toBe(original);
    expect(globalThis.setImmediate).toBe(original);
    expect(globalThis.clearImmediate).toBe(originalClear);
  });
});
