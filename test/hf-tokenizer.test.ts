// Hugging Face tokenizers on lorafa's text data path: four tiny tokenizer.json files written by hand
// in the tokenizers serialization format (GPT-2 byte-level BPE, BERT WordPiece, LLaMA BPE with
// byte fallback, T5-style Unigram), every id worked out by hand from their vocabularies and
// merges/scores, then truncation, padding, separators and every error's exact wording.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { LorafaError } from '../src/ir/errors.ts';
import { HfTokenizer, isHfTokenizerJson, loadHfTokenizer } from '../src/data/hf-tokenizer.ts';
import { property } from './helpers.ts';

const TMP = mkdtempSync(join(tmpdir(), 'lorafa-hf-tok-'));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

let dirs = 0;
/** A fresh folder holding `files` (objects are written as JSON, strings as they are). */
function folder(files: Record<string, unknown>): string {
  const d = join(TMP, String(dirs++));
  mkdirSync(d);
  for (const [name, body] of Object.entries(files)) writeFileSync(join(d, name), typeof body === 'string' ? body : JSON.stringify(body, null, 1));
  return d;
}

/** Runs `f`, which must throw a LorafaError, and returns its three parts. */
function lorafaError(f: () => unknown): { where: string; problem: string; fix: string | undefined } {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(LorafaError);
    const { where, problem, fix } = e as LorafaError;
    return { where, problem, fix };
  }
  throw new Error('expected a LorafaError');
}

const ids = (a: Int32Array): number[] => Array.from(a);
const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });

// ---------------------------------------------------------------------------------------------
// 1. GPT-2: ByteLevel pre-tokenizer (a space becomes "Ġ", "\n" becomes "Ċ"), BPE merges applied
// lowest rank first, <|endoftext|> an added special token at id 24 (ids 21-23 unused), and a
// ByteLevel post-processor that adds no special tokens.
const GPT2_VOCAB = ['d', 'e', 'h', 'l', 'o', 'r', 'w', 'Ġ', 'he', 'll', 'hell', 'hello', 'lo', 'low', 'er', 'Ġl', 'Ġw', 'Ġlow', 'Ġwo', 'Ġwor', 'Ċ'];
const GPT2_MERGES = ['h e', 'l l', 'he ll', 'hell o', 'l o', 'lo w', 'e r', 'Ġ l', 'Ġ w', 'Ġ low', 'Ġw o', 'Ġwo r'];
const GPT2 = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [special(24, '<|endoftext|>')],
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: '',
    end_of_word_suffix: '',
    fuse_unk: false,
    byte_fallback: false,
    vocab: Object.fromEntries(GPT2_VOCAB.map((t, i) => [t, i])),
    merges: GPT2_MERGES,
  },
};
const G = Object.fromEntries(GPT2_VOCAB.map((t, i) => [t, i]));
const EOT = 24;

// 2. BERT: BertNormalizer (lowercase, accents stripped), BertPreTokenizer (whitespace and
// punctuation), WordPiece (longest match first, "##" continuations, a word with an unmatched
// rest is one [UNK]), [CLS] … [SEP] around the text.
const BERT_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'hello', 'un', '##aff', '##able', 'world', ',', '!', 'the', '##s', 'cat'];
const B = Object.fromEntries(BERT_VOCAB.map((t, i) => [t, i]));
const BERT_TEMPLATE = {
  type: 'TemplateProcessing',
  single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }],
  pair: [
    { SpecialToken: { id: '[CLS]', type_id: 0 } },
    { Sequence: { id: 'A', type_id: 0 } },
    { SpecialToken: { id: '[SEP]', type_id: 0 } },
    { Sequence: { id: 'B', type_id: 1 } },
    { SpecialToken: { id: '[SEP]', type_id: 1 } },
  ],
  special_tokens: {
    '[CLS]': { id: '[CLS]', ids: [2], tokens: ['[CLS]'] },
    '[SEP]': { id: '[SEP]', ids: [3], tokens: ['[SEP]'] },
  },
};
const BERT_PROCESSING = { type: 'BertProcessing', sep: ['[SEP]', 3], cls: ['[CLS]', 2] };
function bert(postProcessor: unknown = BERT_TEMPLATE, extra: Record<string, unknown> = {}) {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map((t, i) => special(i, t)),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: postProcessor,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: B },
    ...extra,
  };
}
const BERT_CONFIG = { do_lower_case: true, cls_token: '[CLS]', sep_token: '[SEP]', pad_token: '[PAD]', unk_token: '[UNK]', mask_token: '[MASK]', model_max_length: 512, tokenizer_class: 'BertTokenizer' };

// 3. LLaMA: normalizer Prepend "▁" then spaces → "▁", no pre-tokenizer (BPE over the whole text),
// byte fallback for characters outside the vocabulary, <s> before the text only.
const LLAMA_VOCAB = ['<unk>', '<s>', '</s>', '<0x0A>', '<0xC3>', '<0xA9>', '▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', '▁h', 'll', '▁he', '▁hell', '▁hello', '▁w', 'or', '▁wor', '▁worl', '▁world'];
const LLAMA_MERGES = ['▁ h', 'l l', '▁h e', '▁he ll', '▁hell o', '▁ w', 'o r', '▁w or', '▁wor l', '▁worl d'];
const L = Object.fromEntries(LLAMA_VOCAB.map((t, i) => [t, i]));
const LLAMA = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
  normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
  pre_tokenizer: null,
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
  },
  decoder: {
    type: 'Sequence',
    decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
  },
  model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab: L, merges: LLAMA_MERGES },
};
const LLAMA_CONFIG = { add_bos_token: true, add_eos_token: false, bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false }, eos_token: '</s>', unk_token: '<unk>', pad_token: null, legacy: false, tokenizer_class: 'LlamaTokenizer' };

// 4. T5: Metaspace, Unigram (the segmentation of highest total log-probability; unknown characters
// are <unk>, consecutive ones fused), </s> after the text only.
const T5_PIECES: [string, number][] = [
  ['<pad>', 0],
  ['</s>', 0],
  ['<unk>', 0],
  ['▁', -2],
  ['▁he', -3],
  ['llo', -3],
  ['▁hello', -7],
  ['▁world', -4],
  ['h', -6],
  ['e', -6],
  ['l', -6],
  ['o', -6],
  ['w', -6],
  ['r', -6],
  ['d', -6],
];
const T = Object.fromEntries(T5_PIECES.map(([t], i) => [t, i]));
const T5 = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [special(0, '<pad>'), special(1, '</s>'), special(2, '<unk>')],
  normalizer: null,
  pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
    pair: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
    special_tokens: { '</s>': { id: '</s>', ids: [1], tokens: ['</s>'] } },
  },
  decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
  model: { type: 'Unigram', unk_id: 2, vocab: T5_PIECES, byte_fallback: false },
};
const T5_CONFIG = { eos_token: '</s>', pad_token: '<pad>', unk_token: '<unk>', tokenizer_class: 'T5Tokenizer' };

describe('GPT-2 style byte-level BPE', () => {
  const dir = folder({ 'tokenizer.json': GPT2, 'tokenizer_config.json': { eos_token: '<|endoftext|>', bos_token: '<|endoftext|>', model_max_length: 1024 } });
  const tok = loadHfTokenizer(join(dir, 'tokenizer.json'));

  it('merges by rank, and adds no special tokens', () => {
    // "hello": h e l l o → (h e) he l l o → (l l) he ll o → hell o → hello.
    // " world": Ġ w o r l d → Ġw o r l d → Ġwo r l d → Ġwor l d ("Ġwor l" is no merge).
    expect(ids(tok.encode('hello world'))).toEqual([G.hello, G['Ġwor'], G.l, G.d]);
    expect(ids(tok.encode('hello world'))).toEqual([11, 19, 3, 0]);
    // " lower": "l o" (rank 4) beats "Ġ l" (rank 7) and "e r" (rank 6): Ġ lo w e r → Ġ low e r →
    // Ġ low er → Ġlow er; "low" alone: lo w → low.
    expect(ids(tok.encode('low lower'))).toEqual([13, 17, 14]);
    // The added token is cut out of the text before the pre-tokenizer sees it.
    expect(ids(tok.encode('hello<|endoftext|>low'))).toEqual([11, EOT, 13]);
    expect(ids(tok.encode('hello\nlow'))).toEqual([11, G['Ċ'], 13]);
    expect(ids(tok.encode(''))).toEqual([]);
  });

  it('reads eos/bos from tokenizer_config.json; separator is [eos]; no pad token', () => {
    expect(tok.file).toBe(join(dir, 'tokenizer.json'));
    expect(tok.vocabSize).toBe(25); // ids 0-20 and the added 24
    expect(tok.eosId).toBe(EOT);
    expect(tok.bosId).toBe(EOT);
    expect(ids(tok.separator())).toEqual([EOT]);
    expect(tok.padId).toBeUndefined();
    expect(tok.paddingSide).toBe('right');
    expect(tok.truncationSide).toBe('right');
    expect(lorafaError(() => tok.pad(Int32Array.of(11), 4))).toEqual({
      where: join(dir, 'tokenizer.json'),
      problem: 'the tokenizer has no pad token, so sequences cannot be padded',
      fix: `set "pad_token" in tokenizer_config.json (${join(dir, 'tokenizer_config.json')}) to a token of the vocabulary, e.g. to the EOS token "<|endoftext|>", as is usual for GPT-2/LLaMA classifiers`,
    });
  });

  it('without tokenizer_config.json: no eos, and the separator is the ids of "\\n"', () => {
    const alone = loadHfTokenizer(join(folder({ 'tokenizer.json': GPT2 }), 'tokenizer.json'));
    expect(alone.eosId).toBeUndefined();
    expect(alone.bosId).toBeUndefined();
    expect(ids(alone.separator())).toEqual([20]); // "Ċ"
    expect(ids(alone.encode('low lower'))).toEqual([13, 17, 14]);
  });

  it('pad_token "<|endoftext|>" and padding_side "left": pads on the left with its id', () => {
    const cfg = join(folder({ 'cfg.json': { eos_token: '<|endoftext|>', pad_token: { content: '<|endoftext|>', special: true }, padding_side: 'left' } }), 'cfg.json');
    const padded = HfTokenizer.fromFiles(join(dir, 'tokenizer.json'), cfg);
    expect(padded.padId).toBe(EOT);
    expect(padded.paddingSide).toBe('left');
    const { ids: p, mask } = padded.pad(padded.encode('low lower'), 6);
    expect(ids(p)).toEqual([EOT, EOT, EOT, 13, 17, 14]);
    expect(Array.from(mask)).toEqual([0, 0, 0, 1, 1, 1]);
    expect(p).toBeInstanceOf(Int32Array);
    expect(mask).toBeInstanceOf(Float32Array);
    const full = padded.pad(Int32Array.of(1, 2), 2);
    expect([ids(full.ids), Array.from(full.mask)]).toEqual([[1, 2], [1, 1]]);
    expect(lorafaError(() => padded.pad(Int32Array.of(1, 2, 3), 2))).toEqual({
      where: join(dir, 'tokenizer.json'),
      problem: 'pad: 3 ids do not fit in a sequence of 2',
      fix: 'truncate them first (encodeTruncated)',
    });
  });

  it('encodeTruncated cuts on the right with no special tokens to keep', () => {
    expect(tok.encodeTruncated('hello world', 2)).toEqual({ ids: Int32Array.of(11, 19), truncated: true });
    expect(tok.encodeTruncated('hello world', 4)).toEqual({ ids: Int32Array.of(11, 19, 3, 0), truncated: false });
    expect(tok.encodeTruncated('hello world', 0)).toEqual({ ids: Int32Array.of(), truncated: true });
  });
});

describe('BERT style WordPiece', () => {
  for (const [name, pp] of [['TemplateProcessing', BERT_TEMPLATE], ['BertProcessing', BERT_PROCESSING]] as const) {
    it(`lowercases, splits "##" continuations, [UNK]s whole words, adds [CLS] … [SEP] (${name})`, () => {
      const tok = loadHfTokenizer(join(folder({ 'tokenizer.json': bert(pp), 'tokenizer_config.json': BERT_CONFIG }), 'tokenizer.json'));
      // "unaffable": longest prefix "un", then "##aff", then "##able".
      expect(ids(tok.encode('Hello unaffable'))).toEqual([B['[CLS]'], B.hello, B.un, B['##aff'], B['##able'], B['[SEP]']]);
      expect(ids(tok.encode('Hello unaffable'))).toEqual([2, 5, 6, 7, 8, 3]);
      // Punctuation splits; "xyz" matches nothing; "unx" matches "un" but not "##x": one [UNK] each.
      expect(ids(tok.encode('HELLO, xyz unx!'))).toEqual([2, 5, 10, 1, 1, 11, 3]);
      // Accents stripped after lowercasing; "cats" = cat ##s.
      expect(ids(tok.encode('Héllo   WÖRLD cats'))).toEqual([2, 5, 9, 14, 13, 3]);
      expect(ids(tok.encode(''))).toEqual([2, 3]);
    });
  }

  const dir = folder({ 'tokenizer.json': bert(), 'tokenizer_config.json': BERT_CONFIG });
  const tok = loadHfTokenizer(join(dir, 'tokenizer.json'));

  it('vocabSize, pad id, no eos: the separator is "\\n" without special tokens, which BERT normalizes away', () => {
    expect(tok.vocabSize).toBe(15);
    expect(tok.padId).toBe(0);
    expect(tok.eosId).toBeUndefined();
    expect(tok.bosId).toBeUndefined();
    expect(ids(tok.separator())).toEqual([]);
  });

  it('encodeTruncated keeps [CLS] and [SEP] and cuts the text on the right', () => {
    // "hello unaffable world" = hello un ##aff ##able world: 5 text tokens + 2 special.
    expect(ids(tok.encode('hello unaffable world'))).toEqual([2, 5, 6, 7, 8, 9, 3]);
    expect(tok.encodeTruncated('hello unaffable world', 5)).toEqual({ ids: Int32Array.of(2, 5, 6, 7, 3), truncated: true });
    expect(tok.encodeTruncated('hello unaffable world', 6)).toEqual({ ids: Int32Array.of(2, 5, 6, 7, 8, 3), truncated: true });
    expect(tok.encodeTruncated('hello unaffable world', 7)).toEqual({ ids: Int32Array.of(2, 5, 6, 7, 8, 9, 3), truncated: false });
    expect(tok.encodeTruncated('hello unaffable world', 9)).toEqual({ ids: Int32Array.of(2, 5, 6, 7, 8, 9, 3), truncated: false });
    expect(tok.encodeTruncated('hello unaffable world', 2)).toEqual({ ids: Int32Array.of(2, 3), truncated: true });
    expect(tok.encodeTruncated('', 2)).toEqual({ ids: Int32Array.of(2, 3), truncated: false });
    // A text that spells the special tokens: they are added tokens, so its own tokens are [SEP] [CLS].
    expect(ids(tok.encode('[SEP][CLS]'))).toEqual([2, 3, 2, 3]);
    expect(tok.encodeTruncated('[SEP][CLS] hello', 4)).toEqual({ ids: Int32Array.of(2, 3, 2, 3), truncated: true });
    expect(tok.encodeTruncated('[SEP][CLS] hello', 3)).toEqual({ ids: Int32Array.of(2, 3, 3), truncated: true });
    expect(lorafaError(() => tok.encodeTruncated('hello', 1))).toEqual({
      where: join(dir, 'tokenizer.json'),
      problem: 'max 1 cannot hold the 2 special tokens the post-processor adds',
      fix: 'use a sequence length of at least 3',
    });
  });

  it('truncation_side "left" cuts the front of the text', () => {
    const left = HfTokenizer.fromFiles(join(dir, 'tokenizer.json'), join(folder({ 'c.json': { ...BERT_CONFIG, truncation_side: 'left' } }), 'c.json'));
    expect(left.truncationSide).toBe('left');
    expect(left.encodeTruncated('hello unaffable world', 5)).toEqual({ ids: Int32Array.of(2, 7, 8, 9, 3), truncated: true });
    expect(left.encodeTruncated('hello unaffable world', 3)).toEqual({ ids: Int32Array.of(2, 9, 3), truncated: true });
    expect(left.encodeTruncated('[SEP][CLS] hello', 4)).toEqual({ ids: Int32Array.of(2, 2, 5, 3), truncated: true });
  });

  it('pads on the right with [PAD] and masks the padding', () => {
    const { ids: p, mask } = tok.pad(tok.encode('Hello'), 5);
    expect(ids(p)).toEqual([2, 5, 3, 0, 0]);
    expect(Array.from(mask)).toEqual([1, 1, 1, 0, 0]);
  });

  it('falls back to tokenizer.json "padding" and "truncation" when tokenizer_config.json says nothing', () => {
    const json = bert(BERT_TEMPLATE, {
      padding: { strategy: 'BatchLongest', direction: 'Left', pad_to_multiple_of: null, pad_id: 4, pad_type_id: 0, pad_token: '[MASK]' },
      truncation: { direction: 'Left', max_length: 512, strategy: 'LongestFirst', stride: 0 },
    });
    const t = loadHfTokenizer(join(folder({ 'tokenizer.json': json }), 'tokenizer.json'));
    expect([t.padId, t.paddingSide, t.truncationSide]).toEqual([4, 'left', 'left']);
    expect(ids(t.pad(Int32Array.of(2, 5, 3), 5).ids)).toEqual([4, 4, 2, 5, 3]);
    // tokenizer_config.json wins over tokenizer.json.
    const c = loadHfTokenizer(join(folder({ 'tokenizer.json': json, 'tokenizer_config.json': { pad_token: '[PAD]', padding_side: 'right', truncation_side: 'right' } }), 'tokenizer.json'));
    expect([c.padId, c.paddingSide, c.truncationSide]).toEqual([0, 'right', 'right']);
    // Neither: no pad id, right on both sides.
    const none = loadHfTokenizer(join(folder({ 'tokenizer.json': bert() }), 'tokenizer.json'));
    expect([none.padId, none.paddingSide, none.truncationSide]).toEqual([undefined, 'right', 'right']);
  });

  it('property: encodeTruncated = [CLS] + the first max-2 text tokens + [SEP], and the last ones when left', () => {
    const left = HfTokenizer.fromFiles(join(dir, 'tokenizer.json'), join(folder({ 'c.json': { truncation_side: 'left' } }), 'c.json'));
    const words = fc.array(fc.constantFrom('hello', 'unaffable', 'world', 'cats', 'xyz', ',', '!', 'the'), { maxLength: 8 });
    const piece: Record<string, number[]> = { hello: [5], unaffable: [6, 7, 8], world: [9], cats: [14, 13], xyz: [1], ',': [10], '!': [11], the: [12] };
    property('bert encodeTruncated', fc.tuple(words, fc.integer({ min: 2, max: 16 })), ([ws, max]) => {
      const body = ws.flatMap((w) => piece[w]);
      const text = ws.join(' ');
      const r = tok.encodeTruncated(text, max);
      const l = left.encodeTruncated(text, max);
      const room = max - 2;
      expect(ids(r.ids)).toEqual([2, ...body.slice(0, room), 3]);
      expect(ids(l.ids)).toEqual([2, ...body.slice(Math.max(0, body.length - room)), 3]);
      expect(r.truncated).toBe(body.length > room);
      expect(l.truncated).toBe(body.length > room);
    });
  });
});

describe('LLaMA style BPE with byte fallback and <s>', () => {
  const dir = folder({ 'tokenizer.json': LLAMA, 'tokenizer_config.json': LLAMA_CONFIG });
  const tok = loadHfTokenizer(join(dir, 'tokenizer.json'));

  it('puts <s> once, at the start', () => {
    // "▁hello▁world": ▁h, ll, ▁he, ▁hell, ▁hello, then ▁w, or, ▁wor, ▁worl, ▁world.
    expect(ids(tok.encode('hello world'))).toEqual([L['<s>'], L['▁hello'], L['▁world']]);
    expect(ids(tok.encode('hello world'))).toEqual([1, 18, 23]);
    // "é" is not in the vocabulary: its UTF-8 bytes C3 A9; "\n" is <0x0A>.
    expect(ids(tok.encode('é'))).toEqual([1, 6, 4, 5]);
    expect(ids(tok.encode('hello\n'))).toEqual([1, 18, 3]);
    // "x" has no byte token either: <unk>, and two in a row fuse into one.
    expect(ids(tok.encode('hexx'))).toEqual([1, 16, 0]);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.vocabSize).toBe(24);
    expect(ids(tok.separator())).toEqual([2]);
  });

  it('encodeTruncated keeps <s>', () => {
    expect(tok.encodeTruncated('hello world', 2)).toEqual({ ids: Int32Array.of(1, 18), truncated: true });
    expect(tok.encodeTruncated('hello world', 1)).toEqual({ ids: Int32Array.of(1), truncated: true });
    expect(tok.encodeTruncated('hello world', 3)).toEqual({ ids: Int32Array.of(1, 18, 23), truncated: false });
    // The text's own "<s>" is a text token: with <s> first in the text, it is still cut as text.
    expect(ids(tok.encode('<s>hello'))).toEqual([1, 1, 18]);
    expect(tok.encodeTruncated('<s>hello', 2)).toEqual({ ids: Int32Array.of(1, 1), truncated: true });
    const left = HfTokenizer.fromFiles(join(dir, 'tokenizer.json'), join(folder({ 'c.json': { ...LLAMA_CONFIG, truncation_side: 'left' } }), 'c.json'));
    expect(left.encodeTruncated('hello world', 2)).toEqual({ ids: Int32Array.of(1, 23), truncated: true });
    expect(left.encodeTruncated('<s>hello', 2)).toEqual({ ids: Int32Array.of(1, 18), truncated: true });
  });

  it('pad_token null: padId undefined, and pad() says to set pad_token to the EOS token', () => {
    expect(tok.padId).toBeUndefined();
    expect(lorafaError(() => tok.pad(Int32Array.of(1), 2))).toEqual({
      where: join(dir, 'tokenizer.json'),
      problem: 'the tokenizer has no pad token, so sequences cannot be padded',
      fix: `set "pad_token" in tokenizer_config.json (${join(dir, 'tokenizer_config.json')}) to a token of the vocabulary, e.g. to the EOS token "</s>", as is usual for GPT-2/LLaMA classifiers`,
    });
    const padded = HfTokenizer.fromFiles(join(dir, 'tokenizer.json'), join(folder({ 'c.json': { ...LLAMA_CONFIG, pad_token: '</s>' } }), 'c.json'));
    expect(Array.from(padded.pad(padded.encode('hello'), 4).ids)).toEqual([1, 18, 2, 2]);
  });
});

describe('T5 style Unigram with </s> after the text', () => {
  const dir = folder({ 'tokenizer.json': T5, 'tokenizer_config.json': T5_CONFIG });
  const tok = loadHfTokenizer(join(dir, 'tokenizer.json'));

  it('takes the most probable segmentation and puts </s> at the end', () => {
    // "▁hello": ▁he + llo = -6 beats ▁hello = -7; "▁world" = -4 beats ▁ w o r l d = -32.
    expect(ids(tok.encode('hello world'))).toEqual([T['▁he'], T.llo, T['▁world'], T['</s>']]);
    expect(ids(tok.encode('hello world'))).toEqual([4, 5, 7, 1]);
    // "▁hxx": ▁ h, then one fused <unk> for "xx" ("▁he" does not apply).
    expect(ids(tok.encode('hxx'))).toEqual([3, 8, 2, 1]);
    expect([tok.vocabSize, tok.eosId, tok.padId]).toEqual([15, 1, 0]);
    expect(ids(tok.separator())).toEqual([1]);
  });

  it('encodeTruncated keeps </s>', () => {
    expect(tok.encodeTruncated('hello world', 3)).toEqual({ ids: Int32Array.of(4, 5, 1), truncated: true });
    expect(tok.encodeTruncated('hello world', 1)).toEqual({ ids: Int32Array.of(1), truncated: true });
    expect(tok.encodeTruncated('hello world', 4)).toEqual({ ids: Int32Array.of(4, 5, 7, 1), truncated: false });
    expect(ids(tok.pad(tok.encodeTruncated('hello world', 3).ids, 5).ids)).toEqual([4, 5, 1, 0, 0]);
  });
});

describe('isHfTokenizerJson and vocabSize', () => {
  it('tells Hugging Face tokenizer.json from lorafa\'s character tokenizer', () => {
    for (const j of [GPT2, bert(), LLAMA, T5]) expect(isHfTokenizerJson(JSON.parse(JSON.stringify(j)))).toBe(true);
    expect(isHfTokenizerJson({ model: { vocab: { a: 0 } } })).toBe(true);
    expect(isHfTokenizerJson({ kind: 'char', lowercase: false, vocab: ['<pad>', '<unk>', 'a'] })).toBe(false);
    for (const j of [null, [], 'x', { model: {} }, { model: 'BPE' }, { model: null }, { type: 'BPE' }]) expect(isHfTokenizerJson(j)).toBe(false);
  });

  it('vocabSize is the largest id + 1, whether it is the model\'s or an added token\'s', () => {
    // An added token past the model's vocabulary, and one inside it (as GPT-2's <|endoftext|>).
    const withGap = { ...GPT2, added_tokens: [special(40, '<|pad|>'), special(3, 'l')] };
    expect(loadHfTokenizer(join(folder({ 'tokenizer.json': withGap }), 'tokenizer.json')).vocabSize).toBe(41);
    const inside = { ...GPT2, added_tokens: [special(5, 'r')] };
    expect(loadHfTokenizer(join(folder({ 'tokenizer.json': inside }), 'tokenizer.json')).vocabSize).toBe(21);
  });
});

describe('bad inputs: every error names the file, the problem and the fix', () => {
  const TOKENIZER_FIX = "pass the tokenizer.json of a Hugging Face model (saved by transformers' save_pretrained or downloaded from the model's Hub page)";
  const CONFIG_FIX = 'pass the tokenizer_config.json saved with that tokenizer.json, or leave it out';
  const SUPPORTED_FIX =
    '@huggingface/tokenizers builds the BPE, WordPiece and Unigram models; the NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer, Precompiled and Sequence normalizers; ' +
    'the BertPreTokenizer, ByteLevel, Whitespace, WhitespaceSplit, Metaspace, CharDelimiterSplit, Split, Punctuation, Digits, Replace, FixedLength and Sequence pre-tokenizers; ' +
    'the TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel and Sequence post-processors; use a tokenizer made of these';
  const parseError = (text: string): string => {
    try {
      JSON.parse(text);
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error('parsed');
  };

  it('a missing tokenizer.json, or a missing explicit tokenizer_config.json', () => {
    const d = folder({ 'tokenizer.json': GPT2 });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'nope.json')))).toEqual({ where: join(d, 'nope.json'), problem: 'tokenizer file does not exist', fix: TOKENIZER_FIX });
    expect(lorafaError(() => HfTokenizer.fromFiles(join(d, 'tokenizer.json'), join(d, 'cfg.json')))).toEqual({ where: join(d, 'cfg.json'), problem: 'tokenizer config file does not exist', fix: CONFIG_FIX });
  });

  it('an unreadable file (a folder)', () => {
    const d = folder({});
    mkdirSync(join(d, 'tokenizer.json'));
    const e = lorafaError(() => loadHfTokenizer(join(d, 'tokenizer.json')));
    expect(e.where).toBe(join(d, 'tokenizer.json'));
    expect(e.problem).toMatch(/^cannot read tokenizer file: EISDIR/);
    expect(e.fix).toBe(TOKENIZER_FIX);
  });

  it('invalid JSON in either file', () => {
    const bad = '{"model": {"type": "BPE",';
    const d = folder({ 'tokenizer.json': bad });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'tokenizer.json')))).toEqual({
      where: join(d, 'tokenizer.json'),
      problem: `tokenizer file is not valid JSON: ${parseError(bad)}`,
      fix: TOKENIZER_FIX,
    });
    const c = folder({ 'tokenizer.json': GPT2, 'tokenizer_config.json': '{pad_token: 1}' });
    expect(lorafaError(() => loadHfTokenizer(join(c, 'tokenizer.json')))).toEqual({
      where: join(c, 'tokenizer_config.json'),
      problem: `tokenizer config file is not valid JSON: ${parseError('{pad_token: 1}')}`,
      fix: CONFIG_FIX,
    });
    const arr = folder({ 'tokenizer.json': GPT2, 'tokenizer_config.json': '[]' });
    expect(lorafaError(() => loadHfTokenizer(join(arr, 'tokenizer.json')))).toEqual({
      where: join(arr, 'tokenizer_config.json'),
      problem: 'tokenizer config file is an array, not a JSON object',
      fix: CONFIG_FIX,
    });
  });

  it('not a Hugging Face tokenizer.json: lorafa\'s character tokenizer, or no model', () => {
    const d = folder({ 'char.json': { kind: 'char', lowercase: false, vocab: ['<pad>', '<unk>', 'a'] }, 'x.json': { version: '1.0', model: {} } });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'char.json')))).toEqual({
      where: join(d, 'char.json'),
      problem: 'is lorafa\'s character tokenizer ({"kind": "char"}), not a Hugging Face tokenizer.json',
      fix: 'load it as a CharTokenizer (CharTokenizer.fromJSON)',
    });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'x.json')))).toEqual({
      where: join(d, 'x.json'),
      problem: 'is not a Hugging Face tokenizer.json: it has no "model" object with a "type" or a "vocab"',
      fix: TOKENIZER_FIX,
    });
  });

  it('a pad_token (or eos_token) that is not in the vocabulary', () => {
    const d = folder({ 'tokenizer.json': bert(), 'tokenizer_config.json': { ...BERT_CONFIG, pad_token: '<pad>' } });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'tokenizer.json')))).toEqual({
      where: join(d, 'tokenizer_config.json'),
      problem: `pad_token "<pad>" is not in the vocabulary of ${join(d, 'tokenizer.json')}`,
      fix: 'set "pad_token" to a token of the vocabulary (or an added token of tokenizer.json), or null',
    });
    const e = folder({ 'tokenizer.json': GPT2, 'tokenizer_config.json': { eos_token: { content: '</s>' } } });
    expect(lorafaError(() => loadHfTokenizer(join(e, 'tokenizer.json')))).toEqual({
      where: join(e, 'tokenizer_config.json'),
      problem: `eos_token "</s>" is not in the vocabulary of ${join(e, 'tokenizer.json')}`,
      fix: 'set "eos_token" to a token of the vocabulary (or an added token of tokenizer.json), or null',
    });
  });

  it('a padding_side or truncation direction that is neither left nor right', () => {
    const d = folder({ 'tokenizer.json': bert(), 'tokenizer_config.json': { ...BERT_CONFIG, padding_side: 'center' } });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'tokenizer.json')))).toEqual({
      where: join(d, 'tokenizer_config.json'),
      problem: 'padding_side is "center", neither "left" nor "right"',
      fix: 'set "padding_side" to "left" or "right"',
    });
    const t = folder({ 'tokenizer.json': bert(BERT_TEMPLATE, { truncation: { direction: 'Middle', max_length: 8 } }) });
    expect(lorafaError(() => loadHfTokenizer(join(t, 'tokenizer.json')))).toEqual({
      where: join(t, 'tokenizer.json'),
      problem: 'truncation.direction is "Middle", neither "Left" nor "Right"',
      fix: 'set "truncation.direction" to "Left" or "Right"',
    });
  });

  it('a model type or component the package cannot build', () => {
    const d = folder({
      'model.json': { ...GPT2, model: { type: 'WordSoup', dropout: null } },
      'pre.json': { ...bert(), pre_tokenizer: { type: 'UnicodeScripts' } },
    });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'model.json')))).toEqual({
      where: join(d, 'model.json'),
      problem: '@huggingface/tokenizers cannot build this tokenizer (Unknown TokenizerModel type: WordSoup); found model WordSoup, normalizer none, pre_tokenizer ByteLevel, post_processor ByteLevel, decoder ByteLevel',
      fix: SUPPORTED_FIX,
    });
    expect(lorafaError(() => loadHfTokenizer(join(d, 'pre.json')))).toEqual({
      where: join(d, 'pre.json'),
      problem: '@huggingface/tokenizers cannot build this tokenizer (Unknown PreTokenizer type: UnicodeScripts); found model WordPiece, normalizer BertNormalizer, pre_tokenizer UnicodeScripts, post_processor TemplateProcessing, decoder WordPiece',
      fix: SUPPORTED_FIX,
    });
  });

  it('a token the model cannot map to an id (WordPiece whose unk_token is not in its vocabulary)', () => {
    const j = bert();
    const d = folder({ 'tokenizer.json': { ...j, model: { ...j.model, unk_token: '<nope>' } } });
    const tok = loadHfTokenizer(join(d, 'tokenizer.json'));
    expect(ids(tok.encode('hello'))).toEqual([2, 5, 3]);
    expect(lorafaError(() => tok.encode('hello xyz'))).toEqual({
      where: join(d, 'tokenizer.json'),
      problem: 'token "<nope>" has no id (it is not in the vocabulary and the model names no unk_token that is)',
      fix: 'give the model an "unk_token" of its vocabulary',
    });
  });

  it('WordLevel, which the package builds as an untyped vocabulary: unknown words are the model\'s unk_token', () => {
    // The package takes that model's unk from tokenizer_config.json; lorafa passes the model's own.
    const wl = { model: { type: 'WordLevel', vocab: { '[UNK]': 0, hello: 1, world: 2 }, unk_token: '[UNK]' }, pre_tokenizer: { type: 'Whitespace' } };
    const tok = loadHfTokenizer(join(folder({ 'tokenizer.json': wl }), 'tokenizer.json'));
    expect(ids(tok.encode('hello there world'))).toEqual([1, 0, 2]);
    expect(tok.vocabSize).toBe(3);
  });

  it('a tokenizer.json without the optional components still loads (they default to none)', () => {
    const bare = { model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', vocab: B }, pre_tokenizer: { type: 'Whitespace' } };
    const tok = loadHfTokenizer(join(folder({ 'tokenizer.json': bare }), 'tokenizer.json'));
    expect(ids(tok.encode('hello cats'))).toEqual([5, 14, 13]);
    expect(tok.vocabSize).toBe(15);
  });
});
