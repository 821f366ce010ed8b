// Hugging Face tokenizers (tokenizer.json + tokenizer_config.json) for lorafa's text data path,
// on @huggingface/tokenizers (pure JS: BPE, WordPiece and Unigram models, their normalizers,
// pre-tokenizers and post-processors). The package tokenizes and adds the post-processor's special
// tokens; truncation, padding and the pad/eos/bos ids are lorafa's, read from the two files the
// way transformers reads them: tokenizer_config.json first, then tokenizer.json's own "padding"
// and "truncation" sections.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { LorafaError } from '../ir/errors.ts';

/** What a text data path needs from a tokenizer (lorafa's character tokenizer provides it too). */
export interface TextTokenizer {
  /** Max id + 1 over the vocabulary and the added tokens. */
  readonly vocabSize: number;
  /** The text's ids with the tokenizer's special tokens (its post-processor), no padding or truncation. */
  encode(text: string): Int32Array;
}

type Side = 'left' | 'right';
type Json = Record<string, unknown>;

const TOKENIZER_FIX = "pass the tokenizer.json of a Hugging Face model (saved by transformers' save_pretrained or downloaded from the model's Hub page)";
const CONFIG_FIX = 'pass the tokenizer_config.json saved with that tokenizer.json, or leave it out';
const SUPPORTED =
  '@huggingface/tokenizers builds the BPE, WordPiece and Unigram models; the NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer, Precompiled and Sequence normalizers; ' +
  'the BertPreTokenizer, ByteLevel, Whitespace, WhitespaceSplit, Metaspace, CharDelimiterSplit, Split, Punctuation, Digits, Replace, FixedLength and Sequence pre-tokenizers; ' +
  'the TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel and Sequence post-processors';
/** A token no vocabulary holds: finds where the post-processor puts the text among its special tokens. */
const SENTINEL = '\u0000lorafa:text\u0000';

function readJson(file: string, what: string, fix: string): unknown {
  if (!existsSync(file)) throw new LorafaError(file, `${what} does not exist`, fix);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new LorafaError(file, `cannot read ${what}: ${(e as Error).message}`, fix);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new LorafaError(file, `${what} is not valid JSON: ${(e as Error).message}`, fix);
  }
}

function isObject(x: unknown): x is Json {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * Whether a parsed tokenizer.json is a Hugging Face one (a "model" object with a "type" or a
 * "vocab"), as opposed to lorafa's character tokenizer ({"kind": "char", …}).
 */
export function isHfTokenizerJson(json: unknown): boolean {
  return isObject(json) && isObject(json.model) && ('type' in json.model || 'vocab' in json.model);
}

/** A component of tokenizer.json as the error messages name it: "BPE", Sequence[Prepend, Replace], none. */
function describe(c: unknown): string {
  if (c === null || c === undefined) return 'none';
  if (!isObject(c)) return JSON.stringify(c);
  const type = typeof c.type === 'string' ? c.type : '(no type)';
  const inner = [c.normalizers, c.pretokenizers, c.processors, c.decoders].find(Array.isArray) as unknown[] | undefined;
  return inner ? `${type}[${inner.map(describe).join(', ')}]` : type;
}

/** A special token as tokenizer_config.json writes it: "</s>", {"content": "</s>", …}, or null. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

export class HfTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly padId: number | undefined;
  readonly paddingSide: Side;
  readonly truncationSide: Side;
  readonly eosId: number | undefined;
  readonly bosId: number | undefined;
  /** How many special tokens the post-processor puts before the text (undefined: not found). */
  private readonly lead: number | undefined;

  private constructor(
    readonly file: string,
    private readonly tok: Tokenizer,
    json: Json,
    config: Json,
    private readonly configFile: string | undefined,
  ) {
    let max = -1;
    for (const [token, id] of tok.get_vocab(true)) if (typeof token === 'string' && id > max) max = id;
    for (const id of tok.get_added_tokens_decoder().keys()) if (id > max) max = id;
    this.vocabSize = max + 1;

    const where = configFile ?? file;
    const idOf = (key: string): number | undefined => {
      const v = config[key];
      if (v === undefined || v === null) return undefined;
      const content = tokenContent(v);
      if (content === undefined) {
        throw new LorafaError(where, `${key} is ${JSON.stringify(v)}, not a token string or {"content": …}`, `set "${key}" to a token of the vocabulary, or null`);
      }
      const id = tok.token_to_id(content);
      if (id === undefined) {
        throw new LorafaError(where, `${key} ${JSON.stringify(content)} is not in the vocabulary of ${file}`, `set "${key}" to a token of the vocabulary (or an added token of tokenizer.json), or null`);
      }
      return id;
    };
    this.eosId = idOf('eos_token');
    this.bosId = idOf('bos_token');

    const padding = isObject(json.padding) ? json.padding : undefined;
    const truncation = isObject(json.truncation) ? json.truncation : undefined;
    let padId = idOf('pad_token');
    if (padId === undefined && padding && padding.pad_id !== undefined && padding.pad_id !== null) {
      const p = padding.pad_id;
      if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p >= this.vocabSize) {
        throw new LorafaError(file, `padding.pad_id ${JSON.stringify(p)} is not an id of the vocabulary [0, ${this.vocabSize})`, 'set "padding.pad_id" to the id of the pad token, or "pad_token" in tokenizer_config.json');
      }
      padId = p;
    }
    this.padId = padId;
    this.paddingSide = side(where, 'padding_side', config.padding_side, file, 'padding.direction', padding?.direction);
    this.truncationSide = side(where, 'truncation_side', config.truncation_side, file, 'truncation.direction', truncation?.direction);

    // Where the post-processor puts the text among its special tokens: the package's own
    // post-processor run on a sentinel token. encodeTruncated checks it against each text and only
    // uses it to choose when the text's tokens could sit at more than one place.
    let lead: number | undefined;
    try {
      const out = tok.post_processor?.post_process([SENTINEL], null, true).tokens ?? [SENTINEL];
      const at = out.indexOf(SENTINEL);
      if (at >= 0 && out.lastIndexOf(SENTINEL) === at) lead = at;
    } catch {
      lead = undefined;
    }
    this.lead = lead;
  }

  /**
   * A tokenizer from a tokenizer.json and, optionally, its tokenizer_config.json (default: the
   * tokenizer_config.json next to tokenizer.json, when there is one).
   */
  static fromFiles(tokenizerJson: string, tokenizerConfigJson?: string): HfTokenizer {
    const json = readJson(tokenizerJson, 'tokenizer file', TOKENIZER_FIX);
    if (!isHfTokenizerJson(json)) {
      const char = isObject(json) && json.kind === 'char';
      throw new LorafaError(
        tokenizerJson,
        char
          ? 'is lorafa\'s character tokenizer ({"kind": "char"}), not a Hugging Face tokenizer.json'
          : 'is not a Hugging Face tokenizer.json: it has no "model" object with a "type" or a "vocab"',
        char ? 'load it as a CharTokenizer (CharTokenizer.fromJSON)' : TOKENIZER_FIX,
      );
    }
    const j = json as Json;
    let configFile = tokenizerConfigJson;
    if (configFile === undefined) {
      const beside = join(dirname(tokenizerJson), 'tokenizer_config.json');
      if (existsSync(beside)) configFile = beside;
    }
    let config: Json = {};
    if (configFile !== undefined) {
      const c = readJson(configFile, 'tokenizer config file', CONFIG_FIX);
      if (!isObject(c)) throw new LorafaError(configFile, `tokenizer config file is ${Array.isArray(c) ? 'an array' : JSON.stringify(c)}, not a JSON object`, CONFIG_FIX);
      config = c;
    }
    const model = j.model as Json;
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(forPackage(j), packageConfig(config, model));
    } catch (e) {
      const modelType = typeof model.type === 'string' ? model.type : `(no type${Array.isArray(model.vocab) ? ', a Unigram vocab' : ''})`;
      const found = `model ${modelType}, normalizer ${describe(j.normalizer)}, pre_tokenizer ${describe(j.pre_tokenizer)}, post_processor ${describe(j.post_processor)}, decoder ${describe(j.decoder)}`;
      throw new LorafaError(tokenizerJson, `@huggingface/tokenizers cannot build this tokenizer (${(e as Error).message}); found ${found}`, `${SUPPORTED}; use a tokenizer made of these`);
    }
    return new HfTokenizer(tokenizerJson, tok, j, config, configFile);
  }

  private ids(text: string, specials: boolean): number[] {
    let ids: number[], tokens: string[];
    try {
      ({ ids, tokens } = this.tok.encode(text, { add_special_tokens: specials }));
    } catch (e) {
      throw new LorafaError(this.file, `@huggingface/tokenizers cannot encode ${JSON.stringify(text.slice(0, 40))}: ${(e as Error).message}`, SUPPORTED);
    }
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw new LorafaError(this.file, `token ${JSON.stringify(tokens[i])} has no id (it is not in the vocabulary and the model names no unk_token that is)`, 'give the model an "unk_token" of its vocabulary');
      }
    }
    return ids;
  }

  encode(text: string): Int32Array {
    return Int32Array.from(this.ids(text, true));
  }

  /**
   * The text as at most `max` ids with its special tokens kept: the text's own tokens are cut to
   * max − (number of special tokens the post-processor adds) on the truncation side, then the
   * special tokens are put back around them exactly as encode() puts them. `truncated` says
   * whether tokens were dropped.
   */
  encodeTruncated(text: string, max: number): { ids: Int32Array; truncated: boolean } {
    if (!Number.isInteger(max) || max < 0) throw new LorafaError(this.file, `encodeTruncated: max must be a non-negative integer, got ${max}`, 'pass the sequence length');
    const all = this.ids(text, true);
    const body = this.ids(text, false);
    const n = all.length - body.length;
    // Where `body` sits inside `all`: every offset k with all[k .. k+|body|) = body.
    const at: number[] = [];
    for (let k = 0; k <= n; k++) {
      let same = true;
      for (let i = 0; i < body.length && same; i++) same = all[k + i] === body[i];
      if (same) at.push(k);
    }
    if (n < 0 || at.length === 0) {
      throw new LorafaError(this.file, `the post-processor does not keep the text's own tokens together (${body.length} without special tokens, ${all.length} with), so they cannot be truncated`, 'use a tokenizer whose post-processor only adds special tokens around the text');
    }
    const k = this.lead !== undefined && at.includes(this.lead) ? this.lead : at[0];
    const room = max - n;
    if (room < 0) {
      throw new LorafaError(this.file, `max ${max} cannot hold the ${n} special token${n === 1 ? '' : 's'} the post-processor adds`, `use a sequence length of at least ${n + 1}`);
    }
    const truncated = body.length > room;
    const kept = !truncated ? body : this.truncationSide === 'right' ? body.slice(0, room) : body.slice(body.length - room);
    const out = new Int32Array(n + kept.length);
    out.set(all.slice(0, k), 0);
    out.set(kept, k);
    out.set(all.slice(k + body.length), k + kept.length);
    return { ids: out, truncated };
  }

  /** Right- or left-pads `ids` (≤ seq) to seq with padId (paddingSide), and the 1/0 attention mask. */
  pad(ids: Int32Array, seq: number): { ids: Int32Array; mask: Float32Array } {
    if (this.padId === undefined) {
      const eos = this.eosId === undefined ? undefined : this.tok.id_to_token(this.eosId);
      throw new LorafaError(
        this.file,
        'the tokenizer has no pad token, so sequences cannot be padded',
        `set "pad_token" in tokenizer_config.json (${this.configFile ?? join(dirname(this.file), 'tokenizer_config.json')}) to a token of the vocabulary, e.g. to the EOS token${eos === undefined ? '' : ` ${JSON.stringify(eos)}`}, as is usual for GPT-2/LLaMA classifiers`,
      );
    }
    if (!Number.isInteger(seq) || seq < 0 || ids.length > seq) {
      throw new LorafaError(this.file, `pad: ${ids.length} ids do not fit in a sequence of ${seq}`, 'truncate them first (encodeTruncated)');
    }
    const out = new Int32Array(seq).fill(this.padId);
    const mask = new Float32Array(seq);
    const start = this.paddingSide === 'right' ? 0 : seq - ids.length;
    out.set(ids, start);
    mask.fill(1, start, start + ids.length);
    return { ids: out, mask };
  }

  /** Ids put between two documents when a corpus is joined for language modelling: [eosId] when there is an EOS token, else the ids of "\n" without special tokens. */
  separator(): Int32Array {
    return this.eosId !== undefined ? Int32Array.of(this.eosId) : Int32Array.from(this.ids('\n', false));
  }
}

/** left/right from tokenizer_config.json, else tokenizer.json's "Left"/"Right", else right. */
function side(configWhere: string, key: string, v: unknown, file: string, jsonKey: string, direction: unknown): Side {
  if (v !== undefined && v !== null) {
    if (v === 'left' || v === 'right') return v;
    throw new LorafaError(configWhere, `${key} is ${JSON.stringify(v)}, neither "left" nor "right"`, `set "${key}" to "left" or "right"`);
  }
  if (direction !== undefined && direction !== null) {
    if (direction === 'Left' || direction === 'Right') return direction === 'Left' ? 'left' : 'right';
    throw new LorafaError(file, `${jsonKey} is ${JSON.stringify(direction)}, neither "Left" nor "Right"`, `set "${jsonKey}" to "Left" or "Right"`);
  }
  return 'right';
}

/** tokenizer.json as the package needs it: its five components present (null when absent) and added_tokens a list. */
function forPackage(j: Json): Json {
  const out: Json = { ...j, added_tokens: Array.isArray(j.added_tokens) ? j.added_tokens : [] };
  for (const k of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder']) if (out[k] === undefined) out[k] = null;
  return out;
}

/**
 * tokenizer_config.json as the package reads it: special tokens as plain strings (it does not
 * unwrap {"content": …}), and an unk_token, the model's own, when the config has none: for a model
 * type it does not know but that has a vocabulary (WordLevel), the package builds a plain
 * vocabulary lookup whose unknown id comes from the config's unk_token.
 */
function packageConfig(config: Json, model: Json): Json {
  const out: Json = { ...config };
  for (const [k, v] of Object.entries(config)) {
    if (k.endsWith('_token')) {
      const c = tokenContent(v);
      if (c !== undefined) out[k] = c;
      else delete out[k];
    }
  }
  if (Array.isArray(out.additional_special_tokens)) out.additional_special_tokens = out.additional_special_tokens.map(tokenContent).filter((x) => x !== undefined);
  if (out.unk_token === undefined && typeof model.unk_token === 'string') out.unk_token = model.unk_token;
  return out;
}

/** = HfTokenizer.fromFiles(file): its tokenizer_config.json is the one beside it, if any. */
export function loadHfTokenizer(file: string): HfTokenizer {
  return HfTokenizer.fromFiles(file);
}
