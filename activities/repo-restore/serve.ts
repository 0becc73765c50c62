/**
 * The process that serves an instant restore's disks from the repository, read-only, as NBD exports on unix sockets
 * of this host: started detached, so it outlives the worker (as the guard does), stopped when hydration is done.
 * The instant-restore room only talks to it through {@link InstantServer}.
 */

/** One disk of the point served on a socket: the point's VM name and target, the socket and the export's name. */
export interface ServeExport {
  domain: string;
  target: string;
  socket: string;
  exportName: string;
}

/** What the serving process serves, and the restore's directory it keeps its files under. */
export interface ServeSpec {
  repo: string;
  keyFile: string;
  group: string;
  snapshotId: string;
  exports: ServeExport[];
  /** The instant restore's own directory on the host (private; the sockets are in it). */
  dir: string;
}

/** The serving process as its status file and the kernel tell it. */
export interface ServeState {
  /** The process is alive. */
  running: boolean;
  /** Every export's socket is there. */
  ready: boolean;
  /** The process reaches the store (when it does not, it holds requests rather than failing them). */
  storeReachable: boolean;
}

export interface InstantServer {
  /** Starts the serving process for `spec` (detached); the caller checks {@link status} first. */
  start(spec: ServeSpec): Promise<void>;
  status(spec: ServeSpec): Promise<ServeState>;
  /** Stops it (no error when it is not running). */
  stop(spec: ServeSpec): Promise<void>;
}
