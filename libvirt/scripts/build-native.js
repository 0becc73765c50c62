#!/usr/bin/env node
// Builds the native addon with node-gyp. Runs as this package's `install` script.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const pkgRoot = path.resolve(__dirname, '..');

function fail(message) {
  console.error(`\n@groupsnap/libvirt: ${message}\n`);
  process.exit(1);
}

const pkgConfig = spawnSync('pkg-config', ['--exists', 'libvirt']);
if (pkgConfig.error) {
  fail('pkg-config was not found. install libvirt-dev and pkg-config (Debian: apt-get install libvirt-dev pkg-config)');
}
if (pkgConfig.status !== 0) {
  fail('pkg-config cannot find libvirt. install libvirt-dev (Debian: apt-get install libvirt-dev)');
}

let nodeGyp;
try {
  nodeGyp = require.resolve('node-gyp/bin/node-gyp.js', { paths: [pkgRoot] });
} catch {
  fail('node-gyp is not installed; run npm install in the workspace root first');
}

const args = [nodeGyp, 'rebuild', '--jobs=max'];
// Distro Node (e.g. /usr/bin/node) ships its headers under <prefix>/include/node. Point node-gyp at them so it
// never tries to download headers (there may be no network).
const nodedir = path.resolve(process.execPath, '../..');
if (!process.env.npm_config_nodedir && fs.existsSync(path.join(nodedir, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${nodedir}`);
}

const result = spawnSync(process.execPath, args, { cwd: pkgRoot, stdio: 'inherit' });
if (result.error) fail(`node-gyp could not start: ${result.error.message}`);
if (result.status !== 0) fail(`node-gyp rebuild failed (exit ${result.status}); see the output above`);
