// The WordPiece vocabulary lorafa learns for its email decoder (src/data/wordpiece.ts), read back
// through the same Hugging Face tokenizer path as any Hub tokenizer.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import { loadHfTokenizer } from '../src/data/hf-tokenizer.ts';
import { buildWordPiece, WORDPIECE_SPECIALS } from '../src/data/wordpiece.ts';
import { property } from './helpers.ts';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function load(files: ReturnType<typeof buildWordPiece>) {
  const d = mkdtempSync(join(tmpdir(), 'lorafa-wp-'));
  dirs.push(d);
  writeFileSync(join(d, 'tokenizer.json'), JSON.stringify(files.tokenizer));
  writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify(files.config));
  return loadHfTokenizer(join(d, 'tokenizer.json'));
}

const corpus = [
  ...Array(30).fill('Re: [SAdev] the spam filter works'),
  ...Array(25).fill('FREE money now!!! click here'),
  ...Array(21).fill('working testing reading'),
  'zebra',
];

describe('buildWordPiece', () => {
  const files = buildWordPiece(corpus, { vocabSize: 120, minCharCount: 20 });
  const tok = load(files);
  const id = (t: string) => files.vocab.indexOf(t);

  test('the specials come first; frequent words are one token each; the vocabulary has the size asked for', () => {
    expect(files.vocab.slice(0, 3)).toEqual([...WORDPIECE_SPECIALS]);
    expect(files.vocab.length).toBe(120);
    expect(new Set(files.vocab).size).toBe(120);
    expect(Array.from(tok.encode('Re: [SAdev] spam'))).toEqual([id('Re:'), id('[SAdev]'), id('spam')]);
    expect(tok.padId).toBe(0);
    expect(Array.from(tok.separator())).toEqual([2]);
  });

  test('an unseen word of known characters falls back to pieces, never to [UNK]; a rare character gives [UNK]', () => {
    // "tester": no such word, but "t", "##e", "##s"… are all in (every kept character, alone and as "##c").
    const ids = Array.from(tok.encode('tester'));
    expect(ids.length).toBeGreaterThan(1);
    expect(ids).not.toContain(1);
    expect(files.vocab[ids[0]].startsWith('##')).toBe(false);
    expect(ids.slice(1).every((i) => files.vocab[i].startsWith('##'))).toBe(true);
    // "z" appears once in the corpus (< minCharCount): "zoo" cannot be spelt, so it is [UNK]; the
    // word "zebra" itself is in the vocabulary, whole.
    expect(Array.from(tok.encode('zoo'))).toEqual([1]);
    expect(Array.from(tok.encode('zebra'))).toEqual([id('zebra')]);
  });

  test('the same corpus in any order gives the same vocabulary', () => {
    property(
      'wordpiece/order',
      fc.array(fc.nat(), { minLength: corpus.length, maxLength: corpus.length }),
      (keys) => {
        const shuffled = corpus.map((t, i) => [keys[i], t] as const).sort((a, b) => a[0] - b[0]).map(([, t]) => t);
        expect(buildWordPiece(shuffled, { vocabSize: 120, minCharCount: 20 }).vocab).toEqual(files.vocab);
      },
      { numRuns: 20 },
    );
  });

  test('frequent inner pieces come after the words, weighted by the counts of their words', () => {
    // "##ing" occurs in three words seen 21 times each: it outranks any piece of a single word.
    const small = buildWordPiece(corpus, { vocabSize: 200, minCharCount: 20, wordShare: 0 });
    const pieces = small.vocab.filter((t) => t.startsWith('##') && [...t].length > 4);
    expect(pieces[0]).toBe('##ing');
    expect(() => buildWordPiece(corpus, { vocabSize: 3 })).toThrow(/vocabSize/);
  });
});
