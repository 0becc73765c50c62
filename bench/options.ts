/**
 * The benchmarks' command lines (bench/*.ts, docs/consistency.md, BENCHMARKS.md), on commander like the
 * `groupsnap` command: `--help` lists every option with its default; a bad value or an unknown option stops the run
 * before anything starts, with exit status 2.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';

/** A whole number from `min` to `max`. */
export function integer(min = 0, max = Number.MAX_SAFE_INTEGER): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
      throw new InvalidArgumentError(`expected a whole number ${range}, got ${JSON.stringify(value)}`);
    }
    return n;
  };
}

/** A comma-separated list of whole numbers >= `min`, e.g. `1,2,4`. */
export function integerList(min = 0): (value: string) => number[] {
  const one = integer(min);
  return (value) => value.split(',').map((v) => one(v));
}

/** A comma-separated list of names out of `allowed`. */
export function nameList<T extends string>(allowed: readonly T[]): (value: string) => T[] {
  return (value) =>
    value.split(',').map((v) => {
      if (!(allowed as readonly string[]).includes(v))
        throw new InvalidArgumentError(`unknown ${JSON.stringify(v)}, expected one of ${allowed.join(', ')}`);
      return v as T;
    });
}

/** A benchmark's command: `node dist/bench/<name>.js [options]`. */
export function benchCommand(name: string, description: string): Command {
  return new Command(`node dist/bench/${name}.js`).description(description).showHelpAfterError().exitOverride();
}

/**
 * The options of `argv` (default: this process's); exits 0 after `--help`, 2 on bad input (after commander's
 * message).
 */
export function parseBenchOptions<T>(command: Command, argv = process.argv): T {
  try {
    command.parse(argv);
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
    throw err;
  }
  return command.opts<T & Record<string, unknown>>();
}
