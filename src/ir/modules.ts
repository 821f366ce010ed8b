// Module names as PEFT matches them, for target_modules and modules_to_save: one rule that the lora
// pass (targets, all-linear's exclusions, freezing) and the PEFT adapter files (src/io/peft.ts) share.

/** PEFT's list matching of target_modules / modules_to_save: a module named by an entry, or ending with `.entry`. */
export function peftMatches(moduleName: string, names: readonly string[]): boolean {
  return names.some((t) => moduleName === t || moduleName.endsWith(`.${t}`));
}

/**
 * Whether a module is saved by modules_to_save: PEFT wraps the whole module an entry names, so its
 * submodules are saved too (RoBERTa's `classifier` holds `classifier.dense` and
 * `classifier.out_proj`; `q_proj` holds every layer's q_proj).
 */
export function savedBy(moduleName: string, names: readonly string[]): boolean {
  const parts = moduleName.split('.');
  for (let n = parts.length; n >= 1; n--) if (peftMatches(parts.slice(0, n).join('.'), names)) return true;
  return false;
}

/** The module a parameter belongs to (`embed_tokens` for `embed_tokens.weight`); a bare name is its own. */
export function moduleOf(paramName: string): string {
  const dot = paramName.lastIndexOf('.');
  return dot < 0 ? paramName : paramName.slice(0, dot);
}
