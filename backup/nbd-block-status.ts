/**
 * NBD block status for backup/nbd-server.ts (the NBD protocol, doc/proto.md of NetworkBlockDevice/nbd, "Metadata
 * querying"): the one metadata context this server offers, `base:allocation`, how the data of
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT is read and which contexts its queries select, and the
 * descriptors of an NBD_REPLY_TYPE_BLOCK_STATUS chunk built from an export's allocation.
 */

/** The `base:allocation` context (the only one offered) and its status flags. */
export const BASE_ALLOCATION = 'base:allocation';
/** The id this server gives `base:allocation` (transient and opaque to clients: any value would do). */
export const BASE_ALLOCATION_ID = 1;
export const NBD_STATE = { hole: 1, zero: 2 } as const;
/** NBD_CMD_FLAG_REQ_ONE: at most one descriptor, not longer than the request. */
export const NBD_CMD_FLAG_REQ_ONE = 8;
/** The longest string the protocol allows (export names, context names, queries). */
const MAX_STRING = 4096;
/** Descriptors in one reply chunk at most (the protocol's SHOULD: 2^20). */
export const MAX_DESCRIPTORS = 1 << 20;

/** A run of an export: `length` bytes at `offset` that hold data, or none (`zero`: a hole that reads as zeros). */
export interface NbdAllocation {
  offset: number;
  length: number;
  zero: boolean;
}

/** The data of LIST_META_CONTEXT / SET_META_CONTEXT: an export name and the client's queries. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/**
 * Reads the option's data: 32-bit name length, name, 32-bit query count, then each query as 32-bit length and
 * string. Returns a message (for NBD_REP_ERR_INVALID) when the data is malformed: lengths past the data, data
 * left over, a string over 4096 bytes, or a query that does not start with a namespace and a colon.
 */
export function parseMetaContextOption(data: Buffer): MetaContextRequest | string {
  if (data.length < 8) return 'option data too short';
  const nameLength = data.readUInt32BE(0);
  if (nameLength > MAX_STRING) return 'export name longer than 4096 bytes';
  if (nameLength > data.length - 8) return 'export name longer than the data';
  const exportName = data.subarray(4, 4 + nameLength).toString('utf8');
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  // Each query takes at least its 4-byte length: a count the data cannot hold is refused before any loop.
  if (count > (data.length - at) / 4) return 'more queries than the data holds';
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) return 'query length past the data';
    const length = data.readUInt32BE(at);
    at += 4;
    if (length > MAX_STRING) return 'query longer than 4096 bytes';
    if (length > data.length - at) return 'query longer than the data';
    const query = data.subarray(at, at + length).toString('utf8');
    at += length;
    if (query.indexOf(':') <= 0) return `query '${query}' does not start with a namespace and a colon`;
    queries.push(query);
  }
  if (at !== data.length) return 'data left over after the queries';
  return { exportName, queries };
}

/**
 * Whether the queries name `base:allocation`. LIST: no query at all, `base:` (the namespace's wildcard) or the
 * name itself; SET: only the name (the spec has SET ignore `base:`). Every other query is ignored, as the spec
 * requires for unknown namespaces and unknown `base:` leaf names.
 */
export function selectsBaseAllocation(queries: string[], list: boolean): boolean {
  if (list && queries.length === 0) return true;
  return queries.some((q) => q === BASE_ALLOCATION || (list && q === 'base:'));
}

/** The data of an NBD_REP_META_CONTEXT reply: the context's id and name. */
export function metaContextReply(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.alloc(4 + n.length);
  d.writeUInt32BE(id, 0);
  n.copy(d, 4);
  return d;
}

/**
 * The payload of an NBD_REPLY_TYPE_BLOCK_STATUS chunk for `length` bytes at `offset`: the context id, then one
 * descriptor (32-bit length, 32-bit flags) per run, holes as HOLE|ZERO and data as 0; adjacent runs of one kind
 * merged, each clipped to the request (so a length always fits 32 bits). `runs` must cover the range in order
 * (what {@link NbdAllocation} lists); with `reqOne` only the first descriptor is sent, and at most
 * {@link MAX_DESCRIPTORS} otherwise (the client asks again from where the reply ends).
 */
export function blockStatusPayload(
  contextId: number,
  runs: NbdAllocation[],
  offset: number,
  length: number,
  reqOne: boolean,
): Buffer {
  const descriptors: { length: number; flags: number }[] = [];
  const end = offset + length;
  let at = offset;
  for (const r of runs) {
    const from = Math.max(at, r.offset);
    const to = Math.min(end, r.offset + r.length);
    if (from !== at) throw new Error(`allocation runs leave a gap at ${at}`);
    if (to <= from) continue;
    const flags = r.zero ? NBD_STATE.hole | NBD_STATE.zero : 0;
    const prev = descriptors[descriptors.length - 1];
    if (prev && prev.flags === flags) prev.length += to - from;
    else {
      if (descriptors.length === (reqOne ? 1 : MAX_DESCRIPTORS)) break;
      descriptors.push({ length: to - from, flags });
    }
    at = to;
  }
  if (descriptors.length === 0) throw new Error(`allocation runs do not cover ${offset}`);
  const p = Buffer.alloc(4 + 8 * descriptors.length);
  p.writeUInt32BE(contextId, 0);
  descriptors.forEach((d, i) => {
    p.writeUInt32BE(d.length, 4 + 8 * i);
    p.writeUInt32BE(d.flags, 8 + 8 * i);
  });
  return p;
}
