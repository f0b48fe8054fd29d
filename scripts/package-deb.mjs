#!/usr/bin/env node
// `npm run package:deb`: build/deb/connrate_<version>_<arch>.deb from the built
// tree (`npm run build` first; the npm script does both). Stages the package in
// a temporary directory and builds it with dpkg-deb; needs dpkg-dev
// (dpkg-shlibdeps computes the shared-library dependencies of the addon).
//
//   /usr/bin/connrate                  launcher: /usr/bin/node on /usr/lib/connrate
//   /usr/lib/connrate/                 package.json, bin/, dist/*.js, build/bpf/connrate.bpf.o,
//                                      node_modules/ with the production dependencies only
//   /lib/systemd/system/connrate.service
//   /usr/share/man/man1/connrate.1.gz
//   /usr/share/bash-completion/completions/connrate
//   /usr/share/doc/connrate/           copyright, README.md, examples/extc.json (the defaults)
import { execFileSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync,
  readdirSync, realpathSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const OUT_DIR = join(REPO, 'build', 'deb');
const APP = '/usr/lib/connrate';
const LOADER = '@xdp-ts/loader';
const MIN_NODE_MAJOR = 20;

const fail = (msg) => {
  console.error(`package:deb: ${msg}`);
  process.exit(1);
};
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], ...opts });
const readJson = (path) => JSON.parse(readFileSync(path, 'utf8'));

const pkg = readJson(join(REPO, 'package.json'));
const version = pkg.version;
if (!/^\d+\.\d+\.\d+$/.test(version)) fail(`package.json version ${JSON.stringify(version)} is not MAJOR.MINOR.PATCH`);
for (const tool of ['dpkg-deb', 'dpkg-shlibdeps', 'dpkg']) {
  try {
    run('sh', ['-c', `command -v ${tool}`]);
  } catch {
    fail(`${tool} is missing: install the Debian packages dpkg-dev and dpkg (scripts/setup.sh does)`);
  }
}
const arch = run('dpkg', ['--print-architecture']).trim();

const loaderDir = realpathSync(join(REPO, 'node_modules', LOADER));
const built = {
  cli: join(REPO, 'dist', 'cli.js'),
  bpf: join(REPO, 'build', 'bpf', 'connrate.bpf.o'),
  addon: join(loaderDir, 'build', 'Release', 'xdp_ts_loader.node'),
  loader: join(loaderDir, 'dist', 'index.js'),
};
for (const [what, path] of Object.entries(built)) {
  if (!existsSync(path)) fail(`${relative(REPO, path)} (${what}) is missing: run "npm run build" first`);
}

const stage = mkdtempSync(join(tmpdir(), 'connrate-deb-'));
// the layout dpkg-shlibdeps expects: debian/control next to debian/<package>/
const root = join(stage, 'debian', 'connrate');
const dest = (p) => join(root, p);
const put = (src, to, mode = 0o644) => {
  mkdirSync(dirname(dest(to)), { recursive: true });
  copyFileSync(src, dest(to));
  chmodSync(dest(to), mode);
};
const write = (to, text, mode = 0o644) => {
  mkdirSync(dirname(dest(to)), { recursive: true });
  writeFileSync(dest(to), text);
  chmodSync(dest(to), mode);
};
/** Copy the .js files (no maps, declarations or build info) of a dist/ tree. */
const copyJs = (from, to) =>
  cpSync(from, dest(to), { recursive: true, filter: (s) => statSync(s).isDirectory() || s.endsWith('.js') });

try {
  // --- the application ------------------------------------------------------------
  const appPkg = {
    name: pkg.name, version, description: pkg.description, license: pkg.license, type: pkg.type,
    private: true, engines: pkg.engines, bin: pkg.bin, dependencies: pkg.dependencies,
  };
  write(`${APP}/package.json`, `${JSON.stringify(appPkg, null, 2)}\n`);
  put(join(REPO, 'bin', 'connrate'), `${APP}/bin/connrate`, 0o755);
  copyJs(join(REPO, 'dist'), `${APP}/dist`);
  put(built.bpf, `${APP}/build/bpf/connrate.bpf.o`);

  // --- production node_modules: the dependency closure of package.json, resolved
  // the way Node resolves it and copied to the same relative places. The loader
  // goes in built: its addon and compiled JS; its dependencies (cmake-js,
  // node-addon-api) only build the addon and stay out.
  const copied = new Set();
  const resolveDep = (fromDir, name) => {
    for (let d = fromDir; d.startsWith(REPO); d = dirname(d)) {
      const p = join(d, 'node_modules', name);
      if (existsSync(join(p, 'package.json'))) return p;
      if (d === REPO) break;
    }
    return fail(`cannot resolve ${name} from ${relative(REPO, fromDir) || '.'}: run "npm ci"`);
  };
  const addDeps = (fromDir, deps) => {
    for (const name of Object.keys(deps ?? {})) {
      const dir = resolveDep(fromDir, name);
      const rel = relative(REPO, dir);
      if (copied.has(rel)) continue;
      copied.add(rel);
      if (name === LOADER) {
        const to = `${APP}/${rel}`;
        const lp = readJson(join(loaderDir, 'package.json'));
        const { dependencies: _build, scripts: _scripts, devDependencies: _dev, files: _files, ...runtime } = lp;
        write(`${to}/package.json`, `${JSON.stringify(runtime, null, 2)}\n`);
        copyJs(join(loaderDir, 'dist'), `${to}/dist`);
        put(built.addon, `${to}/build/Release/xdp_ts_loader.node`, 0o755);
        for (const f of readdirSync(loaderDir).filter((f) => /^(LICENSE|README)/.test(f))) put(join(loaderDir, f), `${to}/${f}`);
        continue;
      }
      cpSync(dir, dest(`${APP}/${rel}`), { recursive: true, filter: (s) => relative(dir, s).split('/')[0] !== 'node_modules' });
      const dp = readJson(join(dir, 'package.json'));
      addDeps(dir, { ...dp.dependencies, ...dp.optionalDependencies });
    }
  };
  addDeps(REPO, pkg.dependencies);

  // --- launcher, unit, man page, completion, docs ----------------------------------
  write('/usr/bin/connrate', `#!/bin/sh\n# connrate: the Node.js ${MIN_NODE_MAJOR}+ of the nodejs package runs ${APP}.\nexec /usr/bin/node ${APP}/bin/connrate "$@"\n`, 0o755);
  put(join(REPO, 'packaging', 'connrate.service'), '/lib/systemd/system/connrate.service');
  const man = readFileSync(join(REPO, 'packaging', 'connrate.1'), 'utf8').replace(/^(\.TH CONNRATE 1 "[^"]*") "connrate [^"]*"/m, `$1 "connrate ${version}"`);
  write('/usr/share/man/man1/connrate.1.gz', gzipSync(man, { level: 9 }));
  // generated from the command tree, so it completes exactly what this build's CLI has
  write('/usr/share/bash-completion/completions/connrate', `${execFileSync(process.execPath, [join(REPO, 'bin', 'connrate'), 'completion', 'bash'], { encoding: 'utf8' })}`);
  const doc = '/usr/share/doc/connrate';
  put(join(REPO, 'README.md'), `${doc}/README.md`);
  write(`${doc}/copyright`, copyright());
  // the store a fresh install starts from, written by the store itself
  const { Store } = await import(join(REPO, 'dist', 'config', 'store.js'));
  const { APPLICATION, VARIABLES } = await import(join(REPO, 'dist', 'config', 'variables.js'));
  const example = join(stage, 'extc.json');
  const first = VARIABLES[0];
  new Store(example).set(APPLICATION, first.name, first.default);
  put(example, `${doc}/examples/extc.json`);

  // --- control files -----------------------------------------------------------------
  mkdirSync(dest('/DEBIAN')); // marks the package root for dpkg-shlibdeps
  writeFileSync(join(stage, 'debian', 'control'), 'Source: connrate\n\nPackage: connrate\nArchitecture: any\n');
  const shlibs = run('dpkg-shlibdeps', ['-O', '--warnings=0', `-e${relative(stage, dest(`${APP}/node_modules/${LOADER}/build/Release/xdp_ts_loader.node`))}`], { cwd: stage })
    .match(/^shlibs:Depends=(.*)$/m)?.[1];
  if (!shlibs) fail('dpkg-shlibdeps found no shared-library dependencies of the addon');
  const installedKb = run('du', ['-sk', '--apparent-size', root]).split(/\s/)[0];
  const control = [
    'Package: connrate',
    `Version: ${version}`,
    `Architecture: ${arch}`,
    'Maintainer: connrate maintainers <connrate@localhost>',
    `Installed-Size: ${installedKb}`,
    `Depends: nodejs (>= ${MIN_NODE_MAJOR}), ${shlibs}, iproute2`,
    'Recommends: systemd',
    'Section: net',
    'Priority: optional',
    'Homepage: https://github.com/connrate/connrate',
    `Description: ${pkg.description}`,
    ' An XDP program keeps a token bucket per (source, destination port, protocol)',
    ' and drops the new TCP and UDP connections that exceed the configured rate,',
    ' without touching established traffic. Configured with the extc variables',
    ' CONNECTION_RATE_LIMIT_*; runs as the systemd service connrate.',
    '',
  ].join('\n');
  write('/DEBIAN/control', control);
  // not enabled on install (the admin configures first); an upgrade restarts a running
  // daemon, which adopts the pinned datapath
  write('/DEBIAN/postinst', maintainerScript('postinst', `
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ -n "$2" ]; then
    systemctl try-restart connrate.service || true
  fi
fi`), 0o755);
  write('/DEBIAN/prerm', maintainerScript('prerm', `
# Removing the package stops limiting: stop the service, then detach the pinned
# datapath (an upgrade keeps it: the new version adopts it).
if [ "$1" = remove ]; then
  if [ -d /run/systemd/system ]; then
    systemctl disable --now connrate.service >/dev/null 2>&1 || true
  fi
  /usr/bin/connrate detach >/dev/null 2>&1 || true
fi`), 0o755);
  write('/DEBIAN/postrm', maintainerScript('postrm', `
if [ "$1" = purge ]; then
  rm -rf /var/lib/connrate
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi`), 0o755);
  // md5sums of the payload, as dpkg --verify reads them
  const sums = run('sh', ['-c', `cd "${root}" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | xargs -0 md5sum`]).replaceAll(' ./', ' ');
  write('/DEBIAN/md5sums', sums);

  // dpkg wants 0755 directories and no group/other-writable files
  normalizeModes(root);
  mkdirSync(OUT_DIR, { recursive: true });
  const deb = join(OUT_DIR, `connrate_${version}_${arch}.deb`);
  run('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', root, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
  console.log(deb);
} finally {
  rmSync(stage, { recursive: true, force: true });
}

function maintainerScript(name, body) {
  return `#!/bin/sh\n# ${name} of connrate\nset -e\n${body.trim()}\nexit 0\n`;
}

function normalizeModes(dir) {
  chmodSync(dir, 0o755);
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    const st = lstatSync(p);
    if (st.isSymbolicLink()) continue;
    if (st.isDirectory()) normalizeModes(p);
    else chmodSync(p, st.mode & 0o111 ? 0o755 : 0o644);
  }
}

function copyright() {
  return `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: connrate

Files: *
Copyright: the connrate authors
License: GPL-2.0-only
 On Debian systems the full text is in /usr/share/common-licenses/GPL-2.

Files: usr/lib/connrate/node_modules/@xdp-ts/loader/*
Copyright: the connrate authors
License: LGPL-2.1-only or BSD-2-Clause
 On Debian systems the LGPL 2.1 is in /usr/share/common-licenses/LGPL-2.1;
 both texts are in usr/lib/connrate/node_modules/@xdp-ts/loader/.

Files: usr/lib/connrate/node_modules/*
Copyright: their authors
License: see each package's LICENSE file and package.json "license"
`;
}
