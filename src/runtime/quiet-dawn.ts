// Dawn's driver warnings, kept from users.
//
// On lavapipe, every requestAdapter() makes Dawn print two lines from native code, straight to the
// process's stderr (fprintf, not through Node):
//   Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16 …
//   Warning: maxDynamicStorageBuffersPerPipelineLayout artificially reduced from 1000000 to 16 …
// They describe Dawn clamping a driver limit lorafa never uses, and no setting turns them off. Both
// are printed inside the synchronous part of requestAdapter(), so `quietDawn(() =>
// gpu.requestAdapter())` points file descriptor 2 at /dev/null for exactly that call and then back
// at the original stderr. lorafa's own warnings (console, process.stderr) are never touched.
//
// How, without dup2 (Node has none): the original stderr is reopened through /proc/self/fd/2
// (a new descriptor on the same pipe or terminal), fd 2 is closed and /dev/null opened (POSIX gives
// the lowest free number: 2), and afterwards the same in reverse. Only done on Linux. A pipe or a
// terminal is reopened read-write (which never blocks); a regular file for appending, unless stdout
// writes to the same file (`>log 2>&1`): the two then share one file offset, which a reopened
// descriptor would not, so there the lines stay. Set LORAFA_DAWN_WARNINGS=1 to see them anyway.
import { spawn } from 'node:child_process';
import { accessSync, closeSync, constants, fstatSync, openSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export function quietDawn<T>(call: () => T): T {
  if (process.platform !== 'linux' || process.env.LORAFA_DAWN_WARNINGS === '1') return call();
  let saved: number;
  let flags: number;
  try {
    const st = fstatSync(2);
    if (st.isFIFO() || st.isCharacterDevice()) {
      // O_RDWR: opening a pipe read-write never blocks, even with no reader left.
      flags = constants.O_RDWR;
    } else if (st.isFile()) {
      const out = fstatSync(1);
      if (out.dev === st.dev && out.ino === st.ino) return call();
      flags = constants.O_WRONLY | constants.O_APPEND;
    } else {
      return call();
    }
    saved = openSync('/proc/self/fd/2', flags);
  } catch {
    return call();
  }
  let swapped = false;
  try {
    const spare = openSync('/dev/null', constants.O_WRONLY);
    closeSync(2);
    const two = openSync('/dev/null', constants.O_WRONLY);
    closeSync(spare);
    swapped = two === 2;
    if (!swapped) closeSync(two); // fd 2 was taken in between: leave it, restore below
  } catch {
    // could not swap; the call prints its lines
  }
  try {
    return call();
  } finally {
    try {
      if (swapped) closeSync(2);
      const back = openSync(`/proc/self/fd/${saved}`, flags);
      if (back !== 2) closeSync(back);
    } catch {
      // stderr could not be reopened: nothing more can be done without dup2
    }
    closeSync(saved);
  }
}

// A socket as stderr (what Node's child_process gives a child: libuv makes stdio pipes with
// socketpair) cannot be reopened through /proc, so quietDawn cannot put it back. There the command
// line runs itself once more as a child whose stderr it reads, dropping Dawn's driver warnings and
// passing every other byte on. The child runs under `setpriv --pdeathsig SIGKILL` (util-linux), so
// if this process is killed — even with SIGKILL — the kernel kills the child at once: killing the
// command kills the work, as without the filter. Signals this process can catch (SIGINT, SIGTERM,
// …) are passed on, and the child's exit code or signal becomes this process's.

const DAWN_WARNING = /^Warning: \S+ artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.$/;

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
    const f = join(dir, cmd);
    try {
      accessSync(f, constants.X_OK);
      return f;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * When stderr is a socket (and Dawn's warnings are not asked for), runs `node [execArgv] script
 * args` as a filtered child and resolves to its exit status; otherwise resolves to undefined and
 * the caller goes on in this process.
 */
export async function runWithFilteredStderr(script: string, args: readonly string[], execArgv: readonly string[] = process.execArgv): Promise<number | undefined> {
  if (process.platform !== 'linux' || process.env.LORAFA_DAWN_WARNINGS === '1' || process.env.LORAFA_STDERR_FILTERED === '1') return undefined;
  try {
    if (!fstatSync(2).isSocket()) return undefined;
  } catch {
    return undefined;
  }
  const setpriv = onPath('setpriv');
  if (!setpriv) return undefined;
  const child = spawn(setpriv, ['--pdeathsig', 'SIGKILL', process.execPath, ...execArgv, script, ...args], {
    stdio: ['inherit', 'inherit', 'pipe'],
    env: { ...process.env, LORAFA_STDERR_FILTERED: '1' },
  });
  let pending = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    const lines = (pending + chunk).split('\n');
    pending = lines.pop()!;
    const kept = lines.filter((l) => !DAWN_WARNING.test(l));
    if (kept.length) process.stderr.write(kept.join('\n') + '\n');
  });
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'] as const;
  const forward = (s: NodeJS.Signals) => child.kill(s);
  for (const s of signals) process.on(s, forward);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => child.on('close', (c, s) => res([c, s])));
  if (pending && !DAWN_WARNING.test(pending)) process.stderr.write(pending);
  for (const s of signals) process.off(s, forward);
  if (signal) {
    process.kill(process.pid, signal);
    return 128;
  }
  return code ?? 1;
}
