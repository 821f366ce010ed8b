// A WordPiece vocabulary learnt from a corpus, written as a Hugging Face tokenizer.json (plus its
// tokenizer_config.json), which lorafa's text path then reads through @huggingface/tokenizers like
// any Hub tokenizer, and which transformers' PreTrainedTokenizerFast loads as it is.
//
// Words are split on whitespace only (the WhitespaceSplit pre-tokenizer), so "Re:", "[SAdev]" or
// "$$$" stay whole where they are frequent. The vocabulary, in id order:
//   [PAD] [UNK] [SEP]                 padding, unknown, and the separator put between documents
//   every character seen at least minCharCount times, most frequent first, then each as "##c"
//                                     (a word of known characters never becomes [UNK])
//   the most frequent words           wordShare of the room left
//   the most frequent word-inner pieces ("##ing", "##tion"…, 2–4 characters, weighted by the
//                                     counts of the words they occur in), until vocabSize
// Ties are settled by string order (UTF-16 code units), so the same corpus always gives the same ids. WordPiece
// then encodes a word as its longest vocabulary prefix, then the longest "##" pieces after it.
import { LorafaError } from '../ir/errors.ts';

export interface WordPieceOptions {
  /** Entries in all, specials included. */
  readonly vocabSize: number;
  /** Characters seen fewer times are left out: a word holding one becomes [UNK] (default 20). */
  readonly minCharCount?: number;
  /** Share of the room after the characters that goes to whole words (default 0.8); the rest to "##" pieces. */
  readonly wordShare?: number;
}

export const WORDPIECE_SPECIALS = ['[PAD]', '[UNK]', '[SEP]'] as const;
/** Words longer than this many characters become [UNK] (Hugging Face's default). */
const MAX_WORD_CHARS = 100;

export interface WordPieceFiles {
  /** tokenizer.json */
  readonly tokenizer: Record<string, unknown>;
  /** tokenizer_config.json: the pad, unk and eos tokens, right padding. */
  readonly config: Record<string, unknown>;
  readonly vocab: readonly string[];
}

const byCount = (a: readonly [string, number], b: readonly [string, number]) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

export function buildWordPiece(texts: Iterable<string>, o: WordPieceOptions): WordPieceFiles {
  const minCharCount = o.minCharCount ?? 20;
  const wordShare = o.wordShare ?? 0.8;
  if (!Number.isInteger(o.vocabSize) || o.vocabSize < WORDPIECE_SPECIALS.length + 2) {
    throw new LorafaError('buildWordPiece', `vocabSize must be an integer ≥ ${WORDPIECE_SPECIALS.length + 2}, got ${o.vocabSize}`);
  }
  if (!(wordShare >= 0 && wordShare <= 1)) throw new LorafaError('buildWordPiece', `wordShare must be within [0, 1], got ${wordShare}`);
  const words = new Map<string, number>();
  for (const t of texts) {
    for (const w of t.split(/\s+/)) if (w) words.set(w, (words.get(w) ?? 0) + 1);
  }
  const chars = new Map<string, number>();
  for (const [w, n] of words) for (const c of w) chars.set(c, (chars.get(c) ?? 0) + n);
  const vocab: string[] = [...WORDPIECE_SPECIALS];
  const have = new Set<string>(vocab);
  const add = (t: string) => {
    if (vocab.length < o.vocabSize && !have.has(t)) {
      vocab.push(t);
      have.add(t);
    }
  };
  const kept = [...chars].filter(([, n]) => n >= minCharCount).sort(byCount).map(([c]) => c);
  for (const c of kept) add(c);
  for (const c of kept) add('##' + c);
  const wordsEnd = vocab.length + Math.floor((o.vocabSize - vocab.length) * wordShare);
  for (const [w] of [...words].sort(byCount)) {
    if (vocab.length >= wordsEnd) break;
    if ([...w].length <= MAX_WORD_CHARS) add(w);
  }
  const pieces = new Map<string, number>();
  for (const [w, n] of words) {
    const cs = [...w];
    if (cs.length > MAX_WORD_CHARS) continue;
    for (let len = 2; len <= 4; len++) {
      for (let k = 1; k + len <= cs.length; k++) {
        const p = '##' + cs.slice(k, k + len).join('');
        pieces.set(p, (pieces.get(p) ?? 0) + n);
      }
    }
  }
  for (const [p] of [...pieces].sort(byCount)) {
    if (vocab.length >= o.vocabSize) break;
    add(p);
  }
  const special = (content: string, id: number) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    vocab,
    tokenizer: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: WORDPIECE_SPECIALS.map(special),
      normalizer: null,
      pre_tokenizer: { type: 'WhitespaceSplit' },
      post_processor: null,
      decoder: { type: 'WordPiece', prefix: '##', cleanup: false },
      model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: MAX_WORD_CHARS, vocab: Object.fromEntries(vocab.map((t, i) => [t, i])) },
    },
    config: { tokenizer_class: 'PreTrainedTokenizerFast', pad_token: '[PAD]', unk_token: '[UNK]', eos_token: '[SEP]', sep_token: '[SEP]', padding_side: 'right' },
  };
}
