import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { chromium, type Browser, type Frame, type Locator, type Page } from 'playwright-core';
import {
  groupSnapshotProgress,
  groupSnapshotResult,
  snapshotGroup,
  startGroupSnapshot,
  type GroupSnapshotInput,
} from '../client';
import { normalizeSnapshotInput } from '../common/validation';
import { startDevServer, type DevServer } from '../dev/temporal-dev-server';
import { VmFleet } from '../dev/vms';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { onHostSummary, snapshotSummary } from '../workflows/ui';
import { FakeHost } from './helpers/fake-hosts';
import { uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

/** Screenshots of the UI, for a person to look at (git-ignored). */
const ARTIFACTS = join(__dirname, 'artifacts');
/** Debian's Chromium (scripts/ensure-chromium.sh installs it); playwright-core never downloads a browser here. */
const CHROMIUM = process.env.GROUPSNAP_CHROMIUM ?? '/usr/bin/chromium';
/** Chromium flags that work on a machine without a network or a display, as root. */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const UI_TIMEOUT_MS = 20_000;

/**
 * What an operator sees of a group snapshot in the Temporal UI, in a real browser: a dev server with its Web UI, a
 * group snapshot of 2 real VMs through one host worker, then the UI's workflow list filtered by the group's search
 * attribute, and the workflow's page: static summary and details, activity summaries, current details, the result
 * and the `progress` query.
 */
describe('Temporal UI shows a group snapshot', () => {
  let server: DevServer;
  let connection: Connection;
  let client: Client;
  let fleet: VmFleet;
  let hypervisor: LibvirtHypervisor;
  let hosts: RunningHosts;
  let browser: Browser;
  const hostId = uniqueId('hui');

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run 'bash scripts/ensure-chromium.sh'`);
    server = await startDevServer({ ui: true });
    connection = await Connection.connect({ address: server.address });
    client = new Client({ connection });
    fleet = await VmFleet.create({ prefix: 'gs-ui', count: 2 });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    hosts = await startHosts([{ hostId, hypervisor }], { address: server.address });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  });

  afterAll(async () => {
    await browser?.close();
    await hosts?.stop();
    await hypervisor?.close();
    await fleet?.destroy();
    await connection?.close();
    await server?.stop();
  });

  /** Waits until `locator` shows something; fails naming `what`. */
  async function shows(locator: Locator, what: string): Promise<void> {
    await locator
      .first()
      .waitFor({ state: 'visible', timeout: UI_TIMEOUT_MS })
      .catch(() => {
        throw new Error(`the Temporal UI shows no ${what}`);
      });
  }

  /** Waits until `text` is visible in the page or in one of its frames (the UI renders Markdown in iframes). */
  async function waitForText(page: Page, text: string, timeoutMs = UI_TIMEOUT_MS): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const frame of page.frames()) {
        if (
          await frame
            .getByText(text)
            .first()
            .isVisible()
            .catch(() => false)
        )
          return frame;
      }
      if (Date.now() > deadline) throw new Error(`the Temporal UI shows no ${JSON.stringify(text)} at ${page.url()}`);
      await page.waitForTimeout(200);
    }
  }

  it('lists the snapshot by GroupsnapGroup and shows its summary, details, activity summaries and result', async () => {
    const group = uniqueId('ui-test');
    const [d1, d2] = fleet.names;
    const input: GroupSnapshotInput = {
      group,
      label: 'ui-check',
      vms: [
        { domain: d1, host: hostId },
        { domain: d2, host: hostId },
      ],
    };
    const result = await snapshotGroup(client, input);
    expect(result.status).toBe('completed');
    // Another group's snapshot, which the filtered list must leave out.
    const other = await snapshotGroup(client, { group: uniqueId('ui-other'), vms: [{ domain: d1, host: hostId }] });
    expect(other.status).toBe('completed');

    const staticSummary = snapshotSummary({ ...normalizeSnapshotInput(input), snapshotId: result.snapshotId });
    const planSummary = onHostSummary('plan', [d1, d2], hostId);
    const freezeSummary = onHostSummary('pause + snapshot', [d1, d2], hostId);
    const catalogSummary = onHostSummary('record catalog of', [d1, d2], hostId);
    mkdirSync(ARTIFACTS, { recursive: true });
    const page = await browser.newPage({ viewport: { width: 1600, height: 1500 } });

    try {
      // The workflow list, filtered by the search attribute through the list query in the URL (visibility may lag).
      const query = `GroupsnapGroup="${group}"`;
      await page.goto(`${server.uiUrl}/namespaces/default/workflows?query=${encodeURIComponent(query)}`);
      const row = page.getByRole('link', { name: result.workflowId });
      const deadline = Date.now() + 30_000;
      while (
        !(await row.waitFor({ state: 'visible', timeout: 5000 }).then(
          () => true,
          () => false,
        ))
      ) {
        if (Date.now() > deadline) throw new Error(`${result.workflowId} is not listed for ${query}`);
        await page.reload();
      }
      await waitForText(page, group); // the filter itself is shown
      expect(await page.getByRole('link', { name: other.workflowId }).count()).toBe(0);
      await row.click();

      // History: the result and the activity summaries in the timeline.
      await page.waitForURL(/\/history/);
      const resultPanel = page.locator('h2:text-is("Result")').locator('xpath=..');
      await shows(resultPanel.getByText(`"snapshotId": "${result.snapshotId}"`), 'snapshotId in the result');
      await shows(resultPanel.getByText('"status": "completed"'), 'status in the result');
      await waitForText(page, `planVms • ${planSummary}`);
      await waitForText(page, `freezeVms • ${freezeSummary}`);
      await waitForText(page, `recordCatalog • ${catalogSummary}`);
      await page.screenshot({ path: join(ARTIFACTS, 'ui-group-snapshot-history.png'), fullPage: true });

      // User Metadata: static summary and details, the events with a summary, and the last current details.
      await page.getByTestId('user-metadata-tab').click();
      await waitForText(page, staticSummary);
      const details = await waitForText(page, 'max freeze');
      for (const text of ['5000 ms', 'ui-check', d1, d2, hostId])
        await shows(details.getByText(text), `${text} in details`);
      await waitForText(page, planSummary);
      await waitForText(page, freezeSummary);
      const current = await waitForText(page, 'done: group snapshot completed');
      await shows(current.getByText(result.snapshotId), 'snapshot id in the current details');
      await shows(current.getByRole('cell', { name: 'snapshotted' }), 'VM outcomes in the current details');
      await page.screenshot({ path: join(ARTIFACTS, 'ui-group-snapshot.png'), fullPage: true });

      // Queries: the `progress` query answers with plain JSON.
      await page.getByTestId('queries-tab').click();
      await page.getByRole('button', { name: 'Run Query' }).click();
      await waitForText(page, '"phase": "done"');
    } catch (err) {
      await page.screenshot({ path: join(ARTIFACTS, 'ui-failure.png'), fullPage: true });
      throw err;
    }
  });

  it('updates the current details as the snapshot goes on', async () => {
    // A fake host whose snapshots take 2 s, so the run can be watched mid-freeze.
    const slow = new FakeHost(uniqueId('slow'), { latencyMs: { snapshot: 2000 } });
    const slowHosts = await startHosts([slow], { address: server.address, workflows: false });
    try {
      slow.addVm('ui-live-1');
      slow.addVm('ui-live-2');
      const handle = await startGroupSnapshot(client, {
        vms: [
          { domain: 'ui-live-1', host: slow.hostId },
          { domain: 'ui-live-2', host: slow.hostId },
        ],
      });
      const currentDetails = async () =>
        (await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata')).currentDetails ?? '';
      const deadline = Date.now() + 10_000;
      while (!(await currentDetails()).includes('**Phase** freezing')) {
        if (Date.now() > deadline) throw new Error(`never seen freezing: ${await currentDetails()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const live = await currentDetails();
      expect(live).toMatch(/\| ui-live-1 \| [^|]+ \| (planned|paused) \|/);
      expect(await groupSnapshotProgress(handle)).toMatchObject({ phase: 'freezing' });
      const result = await groupSnapshotResult(handle);
      expect(result.status).toBe('completed');
      const final = await currentDetails();
      expect(final).toContain('**Phase** done: group snapshot completed');
      expect(final).toContain(`| ui-live-2 | ${slow.hostId} | resumed | snapshotted |`);
    } finally {
      await slowHosts.stop();
      slow.cleanup();
    }
  });
});
