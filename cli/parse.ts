import { InvalidArgumentError } from 'commander';
import { QUIESCE_MODES, RESUME_WHEN, type QuiesceMode, type ResumeWhen, type VmRef } from '../common/types';
import { checkSnapshotsInFlight } from '../common/host-types';

/** `domain[@host]`; the host defaults to `defaultHost`. */
export function parseVmRef(value: string, defaultHost: string): VmRef {
  const at = value.lastIndexOf('@');
  const domain = at >= 0 ? value.slice(0, at) : value;
  const host = at >= 0 ? value.slice(at + 1) : defaultHost;
  if (!domain || !host) throw new InvalidArgumentError(`expected <domain>[@<host>], got ${JSON.stringify(value)}`);
  return { domain, host };
}

export function parseInteger(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer, got ${JSON.stringify(value)}`);
  return n;
}

/** `--snapshots-in-flight`: a whole number from 1 to 64. */
export function parseSnapshotsInFlight(value: string): number {
  try {
    return checkSnapshotsInFlight(parseInteger(value));
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

export function parseQuiesce(value: string): QuiesceMode {
  if (!(QUIESCE_MODES as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`expected one of ${QUIESCE_MODES.join(', ')}`);
  }
  return value as QuiesceMode;
}

export function parseResumeWhen(value: string): ResumeWhen {
  if (!(RESUME_WHEN as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`expected one of ${RESUME_WHEN.join(', ')}`);
  }
  return value as ResumeWhen;
}

export function collect<T>(parse: (v: string) => T): (value: string, previous: T[] | undefined) => T[] {
  return (value, previous) => [...(previous ?? []), parse(value)];
}
