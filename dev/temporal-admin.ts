import { Connection, type ConnectionOptions } from '@temporalio/client';
import protobuf from 'protobufjs';

const DESCRIBE_MUTABLE_STATE = '/temporal.server.api.adminservice.v1.AdminService/DescribeMutableState';

/** Where the cluster keeps one workflow: its history shard and the history service that owns that shard now. */
export interface WorkflowPlacement {
  shardId: string;
  /** host:port of the owning history service (its gRPC address, as the cluster's membership names it). */
  historyAddress: string;
}

/**
 * A client Connection that can also ask a self-hosted server's admin API (served on the frontend port) which
 * history host owns a workflow, so a test can crash exactly that server process. Not for Temporal Cloud, which
 * does not expose the admin API.
 */
export class AdminConnection extends Connection {
  static override async connect(options?: ConnectionOptions): Promise<AdminConnection> {
    return (await super.connect(options)) as AdminConnection;
  }

  /** The admin API's `DescribeMutableState`, decoding only the shard id and the history address. */
  describeWorkflowPlacement(namespace: string, workflowId: string): Promise<WorkflowPlacement> {
    const w = protobuf.Writer.create();
    w.uint32((1 << 3) | 2).string(namespace);
    w.uint32((2 << 3) | 2)
      .fork()
      .uint32((1 << 3) | 2)
      .string(workflowId)
      .ldelim();
    // skip_force_reload: answer from the owner's cache when it has the workflow loaded.
    w.uint32(3 << 3).bool(true);
    const request = Buffer.from(w.finish());
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        DESCRIBE_MUTABLE_STATE,
        (b: Buffer) => b,
        (b: Buffer) => b,
        request,
        (err, res) => {
          if (err || !res) return reject(err ?? new Error('DescribeMutableState: empty reply'));
          const r = protobuf.Reader.create(res);
          const out: WorkflowPlacement = { shardId: '', historyAddress: '' };
          while (r.pos < r.len) {
            const tag = r.uint32();
            if (tag >>> 3 === 1) out.shardId = r.string();
            else if (tag >>> 3 === 2) out.historyAddress = r.string();
            else r.skipType(tag & 7);
          }
          resolve(out);
        },
      );
    });
  }
}
