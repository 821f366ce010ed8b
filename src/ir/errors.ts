import { fmtLoc, fmtType, type SourceLoc, type Value } from './types.ts';

/** Every error lorafa raises on bad input: where it happened, what is wrong, and how to fix it. */
export class LorafaError extends Error {
  constructor(
    readonly where: string,
    readonly problem: string,
    readonly fix?: string,
  ) {
    super(`${where ? where + ': ' : ''}${problem}${fix ? `\n  fix: ${fix}` : ''}`);
    this.name = new.target.name;
  }
}

/**
 * Runs a command's body and turns a LorafaError (or another lorafa copy's: a trainer may import a
 * different checkout) into its message on stderr and exit status 1, and a command-line usage error
 * (commander's, which it has already printed) into status 2; anything else is a bug and
 * propagates. Resolves to the status: 0, or the body's own `process.exitCode`.
 */
export async function asCommand(body: () => Promise<void>): Promise<number> {
  try {
    await body();
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof LorafaError || (e instanceof Error && 'where' in e && 'problem' in e)) {
      console.error(`lorafa: ${e.message}`);
      return 1;
    }
    // commander (with exitOverride) has printed its message; --help and --version are not errors.
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('commander.')) {
      return code === 'commander.helpDisplayed' || code === 'commander.help' || code === 'commander.version' ? 0 : 2;
    }
    throw e;
  }
}

/** A shape rule failed: names the op, the operand shapes and names, and the model's source line. */
export class ShapeError extends LorafaError {
  constructor(
    readonly op: string,
    readonly operands: readonly Value[],
    problem: string,
    readonly src?: SourceLoc,
    fix?: string,
  ) {
    const ops = operands.map((v, i) => `  #${i} ${JSON.stringify(v.name)}: ${fmtType(v.type)}`).join('\n');
    super(fmtLoc(src) || '<unknown location>', `${op}: ${problem}\n${ops}`, fix);
  }
}

/** The model definition itself is malformed (duplicate names, no loss, bad export…). */
export class ModelError extends LorafaError {}

/** The IR broke an invariant: a lorafa bug, not the user's. */
export class VerifyError extends LorafaError {}

/**
 * Thrown by shape rules with just the problem; the Builder adds the op, the operands and the
 * source line, so rules stay short and every message has the same form.
 */
export class ShapeProblem extends Error {
  constructor(
    message: string,
    readonly fix?: string,
  ) {
    super(message);
  }
}
