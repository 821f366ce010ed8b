// A character-level tokenizer: small, deterministic and lossless over its vocabulary, enough for
// the char-LM and spam examples. Ids: 0 = <pad>, 1 = <unk>, then every character (code point)
// seen at least minCount times, sorted by code point, so the same text always gives the same ids.
// `extend` appends the characters of a new domain after them, so a base model's ids stay put.
// Serialised as JSON next to an adapter; fromJSON validates it strictly.
import { LorafaError } from '../ir/errors.ts';

export const PAD_ID = 0;
export const UNK_ID = 1;
const SPECIALS = ['<pad>', '<unk>'] as const;
/** What decode writes for <unk>. */
export const UNK_CHAR = '\uFFFD';

export interface CharTokenizerOptions {
  /** Keep characters seen at least this many times (default 1). */
  readonly minCount?: number;
  /** Lowercase text before counting and before encoding (default false). */
  readonly lowercase?: boolean;
}

export interface CharTokenizerJSON {
  readonly kind: 'char';
  readonly lowercase: boolean;
  /** vocab[id]: "<pad>", "<unk>", then one distinct character per entry (fromText: ascending by code point; extend appends). */
  readonly vocab: readonly string[];
}

export class CharTokenizer {
  private readonly ids = new Map<string, number>();

  private constructor(
    readonly vocab: readonly string[],
    readonly lowercase: boolean,
  ) {
    vocab.forEach((c, i) => i >= SPECIALS.length && this.ids.set(c, i));
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  static fromText(text: string, opts: CharTokenizerOptions = {}): CharTokenizer {
    const minCount = opts.minCount ?? 1;
    if (!Number.isInteger(minCount) || minCount < 1) {
      throw new LorafaError('CharTokenizer.fromText', `minCount must be a positive integer, got ${minCount}`);
    }
    const lowercase = opts.lowercase ?? false;
    const counts = new Map<string, number>();
    for (const c of lowercase ? text.toLowerCase() : text) counts.set(c, (counts.get(c) ?? 0) + 1);
    const chars = [...counts].filter(([, n]) => n >= minCount).map(([c]) => c);
    chars.sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
    return new CharTokenizer([...SPECIALS, ...chars], lowercase);
  }

  /**
   * This vocabulary followed by the characters of `text` it lacks, most frequent first (ties by code
   * point), at least minCount times each, until `maxSize` entries: every existing id keeps its
   * character, so a model trained with this tokenizer reads the new one the same way, and learns
   * rows for the new ids (domain-adaptive pretraining on text with other characters).
   */
  extend(text: string, maxSize: number, opts: { minCount?: number } = {}): CharTokenizer {
    const minCount = opts.minCount ?? 1;
    if (!Number.isInteger(maxSize) || maxSize < this.vocab.length) {
      throw new LorafaError('CharTokenizer.extend', `maxSize must be an integer ≥ the current ${this.vocab.length} entries, got ${maxSize}`);
    }
    const counts = new Map<string, number>();
    for (const c of this.lowercase ? text.toLowerCase() : text) if (!this.ids.has(c)) counts.set(c, (counts.get(c) ?? 0) + 1);
    const added = [...counts]
      .filter(([, n]) => n >= minCount)
      .sort((a, b) => b[1] - a[1] || a[0].codePointAt(0)! - b[0].codePointAt(0)!)
      .slice(0, maxSize - this.vocab.length)
      .map(([c]) => c);
    return new CharTokenizer([...this.vocab, ...added], this.lowercase);
  }

  /** One id per code point; characters outside the vocabulary become <unk>. */
  encode(s: string): Int32Array {
    const chars = Array.from(this.lowercase ? s.toLowerCase() : s);
    const out = new Int32Array(chars.length);
    for (let i = 0; i < chars.length; i++) out[i] = this.ids.get(chars[i]) ?? UNK_ID;
    return out;
  }

  /** The ids of the first `n` code points at most: encode(s).subarray(0, n) without reading the rest. */
  encodePrefix(s: string, n: number): Int32Array {
    // Lowercasing never shortens a text, so 2n code units hold at least its first n code points.
    const out = new Int32Array(n);
    let k = 0;
    for (const ch of this.lowercase ? s.slice(0, 2 * n).toLowerCase() : s) {
      if (k === n) break;
      out[k++] = this.ids.get(ch) ?? UNK_ID;
    }
    return k === n ? out : out.slice(0, k);
  }

  /** Ids → text: <pad> is dropped, <unk> becomes U+FFFD; an id outside the vocabulary throws. */
  decode(ids: ArrayLike<number>): string {
    let s = '';
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === PAD_ID) continue;
      if (id === UNK_ID) s += UNK_CHAR;
      else if (Number.isInteger(id) && id > UNK_ID && id < this.vocab.length) s += this.vocab[id];
      else throw new LorafaError('CharTokenizer.decode', `id ${id} at position ${i} is outside the vocabulary [0, ${this.vocab.length})`);
    }
    return s;
  }

  toJSON(): CharTokenizerJSON {
    return { kind: 'char', lowercase: this.lowercase, vocab: [...this.vocab] };
  }

  /** A tokenizer from its JSON; `where` (a file path, say) names the source in errors. */
  static fromJSON(obj: unknown, where: string): CharTokenizer {
    const fix = 'regenerate the tokenizer (CharTokenizer.fromText(...).toJSON())';
    const bad = (problem: string): never => {
      throw new LorafaError(where, `malformed char tokenizer: ${problem}`, fix);
    };
    const o = obj as Partial<Record<keyof CharTokenizerJSON, unknown>>;
    if (!o || typeof o !== 'object' || Array.isArray(o)) return bad('expected an object {kind: "char", lowercase, vocab}');
    if (o.kind !== 'char') bad(`kind is ${JSON.stringify(o.kind)}, expected "char"`);
    if (typeof o.lowercase !== 'boolean') bad(`lowercase is ${JSON.stringify(o.lowercase)}, expected a boolean`);
    const v = o.vocab;
    if (!Array.isArray(v) || v.some((c) => typeof c !== 'string')) return bad('vocab is not an array of strings');
    if (v[0] !== SPECIALS[0] || v[1] !== SPECIALS[1]) bad(`vocab must start with ${JSON.stringify(SPECIALS)}, found ${JSON.stringify(v.slice(0, 2))}`);
    const seen = new Map<string, number>();
    for (let i = SPECIALS.length; i < v.length; i++) {
      const c = v[i] as string;
      if ([...c].length !== 1) bad(`vocab[${i}] = ${JSON.stringify(c)} is not a single character`);
      const first = seen.get(c);
      if (first !== undefined) bad(`vocab[${i}] = ${JSON.stringify(c)} repeats vocab[${first}]: each character needs one id`);
      seen.set(c, i);
    }
    return new CharTokenizer(v as string[], o.lowercase as boolean);
  }
}
