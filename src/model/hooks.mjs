// Node module hooks (module.register) for the files lorafa imports on a user's behalf: model files
// and generated trainers. Plain JavaScript: it runs on Node's hooks thread, before any TypeScript
// loader is in place there.
//
// 1. `import … from 'lorafa'` resolves to the lorafa that is doing the loading (its own package
//    door), whatever the importing file's folder holds: no package.json, no node_modules, or
//    another copy of lorafa. One process, one lorafa: the Builder a model receives and the one it
//    imports are the same module.
// 2. A .ts / .mts file outside node_modules is an ES module, whatever the nearest package.json
//    says. Without this, a model in a folder whose package.json has no "type" (npm init's default)
//    or none at all is loaded as CommonJS, and its `import 'lorafa'` fails with "Cannot require()
//    ES Module … in a cycle".

/** @type {string} */
let index;

/** @param {{ index: string }} data */
export function initialize(data) {
  index = data.index;
}

/**
 * @param {string} specifier
 * @param {{ conditions: string[], parentURL?: string }} context
 * @param {(s: string, c: unknown) => Promise<{ url: string, format?: string }>} next
 */
export async function resolve(specifier, context, next) {
  if (specifier === 'lorafa') return { url: index, format: 'module', shortCircuit: true };
  const r = await next(specifier, context);
  if (r.url.startsWith('file:') && /\.m?tsx?$/.test(new URL(r.url).pathname) && !r.url.includes('/node_modules/')) {
    return { ...r, format: 'module' };
  }
  return r;
}
