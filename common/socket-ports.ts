/** Fresh ports for clones' socket links (the XML side: hypervisor/socket-links.ts). Pure: used by workflows. */

/** Fresh ports chosen on one host for the socket links of its VMs (see hypervisor/socket-links.ts). */
export interface SocketPortChoice {
  /** Ports a VM of this host binds (UDP local, TCP server, multicast) -> a port free on this host. */
  bound: Record<string, number>;
  /** Ports a VM of this host only sends or connects to -> a fresh port (no one listens there unless a clone binds it). */
  connected: Record<string, number>;
}

/**
 * A socket-port map for a restore from several hosts' choices: `bound` maps of each host (fresh ports free on the
 * host whose VM binds the port) win over `connected` ones (fresh ports only sent or connected to, e.g. a peer
 * outside the group: any unused port isolates the clone from it). The first host's choice wins on duplicates.
 */
export function mergeSocketPortChoices(choices: SocketPortChoice[]): Record<string, number> {
  const map: Record<string, number> = {};
  for (const c of choices) for (const [p, to] of Object.entries(c.bound)) if (!(p in map)) map[p] = to;
  for (const c of choices) for (const [p, to] of Object.entries(c.connected)) if (!(p in map)) map[p] = to;
  return map;
}
