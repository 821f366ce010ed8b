// The one output layer: every file and folder lorafa writes goes through here.
//
//   writeFileAtomic(path, bytes)   temp file beside it, fsync, rename, fsync of the folder
//   ensureDir(path)                mkdir -p, or a clear error (a file in the way, no permission, …)
//   replaceDir(path, build)        a whole output (trainer folder, --out folder, adapter) built in a
//                                  temporary sibling, then swapped in with two renames
//   cleanStale(path)               removes what a killed run left beside `path` and says so
//   checkWritable(dir, bytes)      before a long run: a probe file, and free space where statfs can tell
//
// Every failure is a LorafaError naming the path, the cause (exists, a file in the way, permission,
// disk full, read-only) and a fix; a failed or killed write leaves what was there before complete.
//
// replaceDir's guarantee. The new folder is built in `.NAME.lorafa-new-PID-X` beside NAME (what the
// old folder holds besides the output's own files — checkpoints, the user's files — is carried over
// as hard links, so nothing is copied or shared mutably: lorafa only ever replaces files by rename).
// The swap renames NAME to `.NAME.lorafa-old-PID-X`, the new folder to NAME, then deletes the old
// one. At every moment a complete output exists: NAME (old or new), or, in the instant between the
// two renames, the old one under its -old name, which the next run moves back (and reports).
import { accessSync, constants, closeSync, existsSync, fsyncSync, linkSync, copyFileSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, statfsSync, writeSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import { fmtBytes } from '../ir/format.ts';

/** What a failed file-system call means for the user: the cause and the fix. */
export function outputError(path: string, e: unknown, doing = 'cannot write'): LorafaError {
  if (e instanceof LorafaError) return e;
  const code = (e as { code?: string }).code;
  const dir = existsSync(path) && statSync(path).isDirectory() ? path : dirname(path);
  switch (code) {
    case 'EEXIST':
      return new LorafaError(path, `${doing}: it already exists`, 'choose another path, or move the existing one away');
    case 'ENOTDIR': {
      const blocker = fileInTheWay(path);
      return blocker
        ? new LorafaError(path, `${doing}: ${blocker} is a file, not a folder`, `move ${blocker} away, or choose a path that is not under it`)
        : new LorafaError(path, `${doing}: a part of the path is not a folder`, 'choose a path whose parents are folders');
    }
    case 'EISDIR':
      return new LorafaError(path, `${doing}: it is a folder, and a file was expected here`, `give a file name, e.g. ${join(path, 'out.svg')}, or move the folder away`);
    case 'EACCES':
    case 'EPERM':
      return new LorafaError(path, `${doing}: permission denied`, `make ${dir} writable (ls -ld ${dir}), or choose a folder you can write to`);
    case 'EROFS':
      return new LorafaError(path, `${doing}: the file system is read-only`, 'choose a folder on a writable file system');
    case 'ENOSPC':
    case 'EDQUOT':
      return new LorafaError(path, `${doing}: no space left on the device (disk full${code === 'EDQUOT' ? ' or over quota' : ''})`, `free space where ${dir} lives (df -h ${dir}), or write elsewhere; nothing already there was changed`);
    case 'ENAMETOOLONG':
      return new LorafaError(path, `${doing}: the name is too long for the file system`, 'choose a shorter path');
    case 'ENOENT':
      return new LorafaError(path, `${doing}: a folder on the way does not exist`, `create ${dirname(path)} first`);
    default:
      return new LorafaError(path, `${doing}: ${(e as Error)?.message ?? String(e)}`, 'check the path, its permissions and the free space');
  }
}

/** The nearest existing ancestor of `path` (or `path` itself) that is not a folder, if any. */
function fileInTheWay(path: string): string | undefined {
  for (let p = resolve(path); ; p = dirname(p)) {
    try {
      if (!statSync(p).isDirectory()) return p;
      return undefined;
    } catch {
      // does not exist: look further up
    }
    if (dirname(p) === p) return undefined;
  }
}

/**
 * Before any work: `path` can become a folder (`kind` 'folder') or a file ('file') — nothing of the
 * wrong kind is in the way and its nearest existing ancestor is writable. Creates nothing.
 */
export function checkOutputPath(path: string, kind: 'folder' | 'file', flag: string): string {
  const p = resolve(path);
  const st = statOrUndefined(p);
  if (st && kind === 'folder' && !st.isDirectory()) throw new LorafaError(p, 'is a file, not a folder', `pass ${flag} a folder (created if missing), or move the file away`);
  if (st && kind === 'file' && st.isDirectory()) throw new LorafaError(p, 'is a folder, and a file was expected here', `pass ${flag} a file name, e.g. ${join(p, 'plan.svg')}`);
  const blocker = fileInTheWay(dirname(p));
  if (blocker) throw new LorafaError(p, `cannot be created: ${blocker} is a file, not a folder`, `pass ${flag} a path that is not under ${blocker}, or move it away`);
  let anc = dirname(p);
  while (!existsSync(anc) && dirname(anc) !== anc) anc = dirname(anc);
  try {
    accessSync(anc, constants.W_OK);
  } catch (e) {
    throw outputError(p, e, `cannot be written (${anc} is not writable)`);
  }
  return p;
}

function statOrUndefined(p: string) {
  try {
    return statSync(p);
  } catch {
    return undefined;
  }
}

/** mkdir -p, with the failure explained. `flag` names the option the path came from, for the fix. */
export function ensureDir(path: string, flag?: string): string {
  const p = resolve(path);
  const blocker = fileInTheWay(p);
  if (blocker === p) throw new LorafaError(p, 'is a file, not a folder', `${flag ? `pass ${flag} a folder` : 'choose a folder'} (created if missing), or move the file away`);
  if (blocker) throw new LorafaError(p, `cannot create the folder: ${blocker} is a file, not a folder`, `move ${blocker} away, or choose a path that is not under it`);
  try {
    mkdirSync(p, { recursive: true });
  } catch (e) {
    throw outputError(p, e, 'cannot create the folder');
  }
  return p;
}

/** Makes a rename durable. Best effort: some file systems refuse to fsync a folder. */
export function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // not supported here; the rename itself is still atomic
  }
}

const suffix = () => `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

/** Writes `bytes` to `path` atomically (its folder created if missing): temp file, fsync, rename. */
export function writeFileAtomic(path: string, bytes: Uint8Array): void {
  const p = resolve(path);
  if (existsSync(p) && statSync(p).isDirectory()) {
    throw new LorafaError(p, 'is a folder, and a file was expected here', `give a file name, e.g. ${join(p, basename(p) + (/\.\w+$/.exec(p)?.[0] ?? '.out'))}, or move the folder away`);
  }
  ensureDir(dirname(p));
  const tmp = join(dirname(p), `.${basename(p)}.tmp-${suffix()}`);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, 'wx');
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, p);
  } catch (e) {
    if (fd !== undefined) closeSync(fd);
    rmSync(tmp, { force: true });
    throw outputError(p, e);
  }
  fsyncDir(dirname(p));
}

const TEMP_KINDS = /^\.(.+)\.lorafa-(new|old)-(\d+)-[a-z0-9]+$/;

/**
 * Whether process `pid` still runs. A zombie (killed, not yet reaped: in a container whose init
 * does not reap, it may stay one) has exited and counts as dead.
 */
export function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
  try {
    // /proc/PID/stat: "pid (comm) state …"; comm may hold spaces and parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch (e) {
    // Gone since kill(pid, 0); with no /proc at all, trust kill(pid, 0).
    return (e as { code?: string }).code !== 'ENOENT' || existsSync('/proc/self/stat') === false;
  }
}

/**
 * Removes what a killed replaceDir left beside `path` (a half-built `-new` folder, an `-old` one
 * that was never deleted), skipping those of a process still running. If `path` itself is missing
 * and an `-old` copy exists (killed between the two renames), that copy is moved back. Returns one
 * line per action, for the log.
 */
export function cleanStale(path: string): string[] {
  const p = resolve(path);
  const parent = dirname(p);
  const name = basename(p);
  let entries: string[];
  try {
    entries = readdirSync(parent);
  } catch {
    return [];
  }
  const notes: string[] = [];
  const mine = entries
    .map((f) => ({ f, m: TEMP_KINDS.exec(f) }))
    .filter((x) => x.m && x.m[1] === name && !alive(Number(x.m[3])));
  const old = mine.find((x) => x.m![2] === 'old');
  if (old && !existsSync(p)) {
    try {
      renameSync(join(parent, old.f), p);
      notes.push(`restored ${shown(p)} from ${old.f} (a run was killed while replacing it)`);
      mine.splice(mine.indexOf(old), 1);
    } catch (e) {
      throw outputError(p, e, `cannot restore it from ${old.f}`);
    }
  }
  for (const x of mine) {
    rmSync(join(parent, x.f), { recursive: true, force: true });
    notes.push(`removed ${shown(join(parent, x.f))} (left by a killed run, pid ${x.m![3]})`);
  }
  return notes;
}

/** Hard-links (or, where links are refused, copies) a file or folder tree. */
function linkTree(from: string, to: string): void {
  const st = lstatSync(from);
  if (st.isDirectory()) {
    mkdirSync(to);
    for (const f of readdirSync(from)) linkTree(join(from, f), join(to, f));
  } else if (st.isFile()) {
    try {
      linkSync(from, to);
    } catch {
      copyFileSync(from, to);
    }
  } else if (st.isSymbolicLink()) {
    copyFileSync(from, to); // follows the link: the new folder holds what it pointed to
  }
}

/** Blocks for `ms` (test hooks only). */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export interface ReplaceOptions {
  /** Names in the old folder that are carried into the new one (default: none). */
  readonly keep?: (name: string) => boolean;
  /** Lines about stale temporaries removed before building. */
  readonly log?: (line: string) => void;
}

/**
 * Replaces the folder `path` all-or-nothing with what `build(dir)` writes into a fresh temporary
 * sibling; see the top of this file. `build` may throw: the temporary folder is removed and the old
 * output is left as it was.
 */
export function replaceDir<T>(path: string, build: (dir: string) => T, opts: ReplaceOptions = {}): T {
  const p = resolve(path);
  for (const line of cleanStale(p)) opts.log?.(line);
  const exists = existsSync(p);
  if (exists && !statSync(p).isDirectory()) throw new LorafaError(p, 'is a file, not a folder', 'choose a folder path (created if missing), or move the file away');
  const parent = ensureDir(dirname(p));
  const tmp = join(parent, `.${basename(p)}.lorafa-new-${suffix()}`);
  let result: T;
  try {
    try {
      mkdirSync(tmp);
    } catch (e) {
      throw outputError(p, e, 'cannot create its temporary folder beside it');
    }
    if (exists && opts.keep) {
      for (const f of readdirSync(p)) {
        if (TEMP_KINDS.test(f) || !opts.keep(f)) continue;
        try {
          linkTree(join(p, f), join(tmp, f));
        } catch (e) {
          throw outputError(join(p, f), e, 'cannot carry it into the new folder');
        }
      }
    }
    result = build(tmp);
    fsyncDir(tmp);
    const delay = Number(process.env.LORAFA_OUTPUT_DELAY_MS ?? 0);
    if (delay > 0) {
      process.stderr.write(`lorafa: (LORAFA_OUTPUT_DELAY_MS) ${p} built in ${tmp}; swapping in ${delay} ms\n`);
      sleepSync(delay);
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e instanceof LorafaError ? e : outputError(p, e);
  }
  const cwdInside = isInside(process.cwd(), p);
  let old: string | undefined;
  try {
    if (exists) {
      old = join(parent, `.${basename(p)}.lorafa-old-${suffix()}`);
      renameSync(p, old);
    }
    renameSync(tmp, p);
  } catch (e) {
    if (old && !existsSync(p)) renameSync(old, p);
    rmSync(tmp, { recursive: true, force: true });
    throw outputError(p, e, 'cannot move the new folder into place');
  }
  fsyncDir(parent);
  if (old) rmSync(old, { recursive: true, force: true });
  if (cwdInside) {
    // This process's working folder was the old one; follow it to the new one.
    try {
      process.chdir(resolve(p, relative(p, process.cwd())));
    } catch {
      process.chdir(p);
    }
  }
  return result;
}

function isInside(child: string, parent: string): boolean {
  const r = relative(parent, child);
  return r === '' || (!r.startsWith('..') && !r.startsWith(sep) && r !== '..');
}

function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

/**
 * Before a long run: `dir` (created if missing) must take a new file, and where statfs can tell,
 * hold `bytes` more. `flag` names the option the folder came from, for the fix.
 */
export function checkWritable(dir: string, bytes: number, flag?: string, target?: string): void {
  const d = ensureDir(dir, flag);
  const probe = join(d, `.lorafa-probe-${suffix()}`);
  try {
    closeSync(openSync(probe, 'wx'));
  } catch (e) {
    const err = outputError(d, e, 'cannot write into the folder');
    throw target ? new LorafaError(target, `cannot be written: ${d} refuses new files (${err.problem.replace(/^cannot write into the folder: /, '')})`, err.fix) : err;
  } finally {
    rmSync(probe, { force: true });
  }
  let free: number | undefined;
  try {
    const s = statfsSync(d);
    free = Number(s.bavail) * Number(s.bsize);
  } catch {
    // statfs unsupported here: the writes themselves will say if the disk fills up
  }
  if (free !== undefined && bytes > free) {
    throw new LorafaError(d, `needs about ${fmtBytes(bytes)} for checkpoints and outputs, and only ${fmtBytes(free)} is free there`, `free space (df -h ${d}), or pass ${flag ?? 'an output folder'} on a disk with room`);
  }
}
