/**
 * The copy worker (`groupsnap copy-worker`): serves the copy activity (activities/copy-activities.ts) on the
 * `groupsnap-copy` task queue. It runs on the admin side, on a machine that holds the source repositories' key and
 * read access (the AWS settings of the process) and the copies' credentials (GROUPSNAP_S3_CREDENTIALS_FILE) and,
 * when they have their own, key: never on a hypervisor host, so a host that is taken over cannot reach the copy.
 */
import { NativeConnection, Worker, type NativeConnectionOptions } from '@temporalio/worker';
import { createCopyActivities, type CopyActivityDeps } from '../activities/copy-activities';
import { COPY_TASK_QUEUE } from '../common/copy-types';

export interface CopyWorkerOptions extends CopyActivityDeps {
  /** An open connection, or the settings of one made here (closed with the worker). */
  connection?: NativeConnection;
  connectionOptions?: NativeConnectionOptions;
  namespace: string;
}

/** A `Worker` on the copy queue with the copy activity; `run()` it. */
export async function createCopyWorker(options: CopyWorkerOptions): Promise<{ worker: Worker; run(): Promise<void> }> {
  const own = options.connection === undefined;
  const connection = options.connection ?? (await NativeConnection.connect(options.connectionOptions));
  const { connection: _c, connectionOptions: _o, namespace, ...deps } = options;
  void _c;
  void _o;
  const worker = await Worker.create({
    connection,
    namespace,
    taskQueue: COPY_TASK_QUEUE,
    activities: createCopyActivities(deps),
  });
  return {
    worker,
    async run() {
      try {
        await worker.run();
      } finally {
        if (own) await connection.close();
      }
    },
  };
}
