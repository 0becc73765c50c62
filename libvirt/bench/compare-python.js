#!/usr/bin/env node
// Per-call latency of suspend, disk-only atomic snapshot and resume: this binding vs python3-libvirt.
//
// Same N real 2-disk firmware-only VMs for both, one persistent connection each, rounds interleaved (the side
// that goes first alternates). Python runs as one persistent child process and times each call itself.
//   npm run bench --workspace @groupsnap/libvirt -- [--vms 4] [--rounds 20] [--spin]
'use strict';

const { execFileSync, spawn } = require('node:child_process');
const { randomBytes } = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const lv = require('../dist');

const URI = 'qemu:///system';
const OPS = ['suspend', 'snapshot', 'resume'];
// Debian's python3-libvirt lives in the system python, which a pyenv shim on PATH may hide.
const PYTHON = process.env.PYTHON || (fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');
const FLAGS = lv.DISK_ONLY | lv.ATOMIC | lv.NO_METADATA;

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

function virtType() {
  try {
    const t = fs.readFileSync('/var/lib/groupsnap/virt-type', 'utf8').trim();
    if (t === 'kvm' || t === 'qemu') return t;
  } catch {
    // default below
  }
  return fs.existsSync('/dev/kvm') ? 'kvm' : 'qemu';
}

function domainXml(name, disks, type) {
  const d = Object.entries(disks)
    .map(
      ([dev, file]) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${file}'/><target dev='${dev}' bus='virtio'/></disk>`,
    )
    .join('');
  return `<domain type='${type}'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os><devices>${d}</devices></domain>`;
}

// An MBR that halts the CPU, so idle guests do not compete with the measured calls for the machine's cores
// (SeaBIOS retrying to boot takes ~75% of a core per VM). --spin keeps plain firmware-only guests.
function createDisk(file, boot) {
  if (!boot) {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
    return;
  }
  const mbr = Buffer.alloc(512);
  Buffer.from([0xfa, 0xf4, 0xeb, 0xfd]).copy(mbr); // cli; hlt; jmp back to hlt
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  fs.writeFileSync(`${file}.mbr`, mbr);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', `${file}.mbr`, file]);
  execFileSync('qemu-img', ['resize', '-q', file, '64M']);
  fs.rmSync(`${file}.mbr`);
}

function snapshotXml(dir, name, tag) {
  const disks = ['vda', 'vdb']
    .map(
      (dev) =>
        `<disk name='${dev}' snapshot='external'><source file='${path.join(dir, `${name}-${dev}.${tag}.qcow2`)}'/></disk>`,
    )
    .join('');
  return `<domainsnapshot><disks>${disks}</disks></domainsnapshot>`;
}

class PythonWorker {
  constructor() {
    this.child = spawn(PYTHON, [path.join(__dirname, 'py_worker.py')], {
      cwd: __dirname,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.lines = readline.createInterface({ input: this.child.stdout })[Symbol.asyncIterator]();
  }
  async request(req) {
    this.child.stdin.write(`${JSON.stringify(req)}\n`);
    const { value, done } = await this.lines.next();
    if (done) throw new Error('python worker exited');
    const res = JSON.parse(value);
    if (!res.ok) throw new Error(`python: ${res.error}`);
    return res;
  }
  stop() {
    this.child.stdin.end();
  }
}

function percentile(sorted, p) {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

async function main() {
  const nVms = arg('vms', 4);
  const rounds = arg('rounds', 20);
  const spin = process.argv.includes('--spin');
  const type = virtType();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gsl-bench-'));
  const prefix = `gsl-bench-${randomBytes(3).toString('hex')}`;
  const conn = await lv.open(URI);
  const python = new PythonWorker();
  const vms = [];
  const samples = { binding: {}, python: {} };
  for (const side of Object.keys(samples)) for (const op of OPS) samples[side][op] = [];

  try {
    for (let i = 0; i < nVms; i++) {
      const name = `${prefix}-${i}`;
      const disks = {};
      for (const dev of ['vda', 'vdb']) {
        disks[dev] = path.join(dir, `${name}-${dev}.qcow2`);
        createDisk(disks[dev], dev === 'vda' && !spin);
      }
      const domain = await conn.defineXML(domainXml(name, disks, type));
      await domain.create();
      vms.push({ name, domain });
    }
    await python.request({ op: 'open', uri: URI });

    const sides = {
      async binding(vm, op, xml) {
        const t0 = process.hrtime.bigint();
        if (op === 'snapshot') await vm.domain.snapshotCreateXML(xml, FLAGS);
        else await vm.domain[op]();
        return Number(process.hrtime.bigint() - t0);
      },
      async python(vm, op, xml) {
        const res = await python.request({ op, name: vm.name, xml, flags: FLAGS });
        return res.ns;
      },
    };

    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? ['binding', 'python'] : ['python', 'binding'];
      for (const side of order) {
        // The group freeze shape: suspend every VM, snapshot every VM, resume every VM; one call at a time.
        for (const op of OPS) {
          for (const vm of vms) {
            const xml = op === 'snapshot' ? snapshotXml(dir, vm.name, `r${r}-${side}`) : undefined;
            samples[side][op].push(await sides[side](vm, op, xml));
          }
        }
      }
    }
  } finally {
    python.stop();
    for (const vm of vms) {
      await vm.domain.destroy().catch(() => undefined);
      await vm.domain.undefine().catch(() => undefined);
    }
    await conn.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }

  const ms = (ns) => Math.round(ns / 1e4) / 100;
  const summary = {};
  for (const op of OPS) {
    const row = {};
    for (const side of ['binding', 'python']) {
      const s = [...samples[side][op]].sort((a, b) => a - b);
      const mean = s.reduce((a, b) => a + b, 0) / s.length;
      row[side] = {
        minMs: ms(s[0]),
        p50Ms: ms(percentile(s, 50)),
        p90Ms: ms(percentile(s, 90)),
        meanMs: ms(mean),
        n: s.length,
      };
    }
    row.ratioP50 = Math.round((row.binding.p50Ms / row.python.p50Ms) * 100) / 100;
    row.ratioP90 = Math.round((row.binding.p90Ms / row.python.p90Ms) * 100) / 100;
    row.ratioMean = Math.round((row.binding.meanMs / row.python.meanMs) * 100) / 100;
    summary[op] = row;
  }
  const machine = {
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    virtType: type,
    libvirt: lv.libvirtVersion(),
    node: process.version,
    python: execFileSync(PYTHON, ['-c', 'import libvirt,sys; print(sys.version.split()[0], libvirt.getVersion())'], {
      encoding: 'utf8',
      cwd: __dirname,
    }).trim(),
  };
  const guest = spin ? 'firmware-only (SeaBIOS boot loop)' : 'halted (MBR: cli; hlt)';
  const result = { date: new Date().toISOString(), vms: nVms, rounds, guest, machine, summary, samplesNs: samples };
  const resultsDir = path.join(__dirname, 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${result.date.slice(0, 10)}.json`);
  fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);

  console.log(
    `\n${nVms} VMs x ${rounds} rounds, ${guest} guests, ${machine.cores} cores (${machine.cpu}), ${type}, ` +
      `libvirt ${machine.libvirt}, ${machine.node}, python ${machine.python}\n`,
  );
  console.log(
    '| operation | binding min / p50 / p90 / mean | python min / p50 / p90 / mean | ratio p50 | ratio p90 | ratio mean |',
  );
  console.log('| --- | --- | --- | --- | --- | --- |');
  const cell = (x) => `${x.minMs} / ${x.p50Ms} / ${x.p90Ms} / ${x.meanMs} ms`;
  for (const op of OPS) {
    const r = summary[op];
    console.log(`| ${op} | ${cell(r.binding)} | ${cell(r.python)} | ${r.ratioP50} | ${r.ratioP90} | ${r.ratioMean} |`);
  }
  console.log(`\nwritten to ${path.relative(process.cwd(), file)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
