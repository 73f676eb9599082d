// scripts/test-tools.sh (npm test's pretest and .ci/run): installs the Debian packages some tests drive where they
// are missing. Run here on a fake PATH of stubs: apt-get, sudo, id and dpkg-query record their arguments, and the
// stub apt-get "installs" a package by making its probe pass (a redis-server on PATH, the Chromium file, torch for
// the stub python, dpkg-query's status), so the script's check after installing is exercised too.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers/cli.js';

const SCRIPT = join(ROOT, 'scripts/test-tools.sh');
const ALL = ['redis-server', 'chromium', 'python3-torch', 'libopenblas0-pthread', 'sentencepiece', 'mesa-vulkan-drivers'];
const BASH = existsSync('/bin/bash') ? '/bin/bash' : '/usr/bin/bash';

let work: string;
let bin: string;
let log: string;
let state: string;

interface Fake {
  /** packages present before the script runs */
  present?: string[];
  uid?: number;
  /** a sudo on PATH: 'ok' lets `sudo -n` run commands, 'refuses' makes it fail as without a sudoers entry */
  sudo?: 'ok' | 'refuses';
  aptGet?: boolean;
  /** the stub apt-get install exits 0 without installing these */
  aptInstallsNot?: string[];
  /** the Debian release's codename (os-release); default trixie */
  codename?: string;
}

async function stub(name: string, body: string): Promise<void> {
  await writeFile(join(bin, name), `#!${BASH}\n${body}\n`);
  await chmod(join(bin, name), 0o755);
}

/** what the stub apt-get install does for one package: make the script's probe for it pass */
function installs(pkg: string): string {
  switch (pkg) {
    case 'redis-server':
      return `printf '#!${BASH}\\n' > "${bin}/redis-server"; chmod_it "${bin}/redis-server"`;
    case 'chromium':
      return `printf '#!${BASH}\\n' > "${state}/chromium"; chmod_it "${state}/chromium"`;
    case 'sentencepiece':
      return `printf '#!${BASH}\\n' > "${bin}/spm_encode"; chmod_it "${bin}/spm_encode"`;
    default:
      return `: > "${state}/${pkg}"`;
  }
}

async function setup(f: Fake): Promise<void> {
  const present = f.present ?? [];
  // chmod is the one real tool the stubs need (to make an installed redis-server / chromium executable)
  const chmodIt = `chmod_it() { "${process.execPath}" -e 'require("fs").chmodSync(process.argv[1], 0o755)' "$1"; }`;
  if (present.includes('redis-server')) await stub('redis-server', 'exit 0');
  if (present.includes('sentencepiece')) await stub('spm_encode', 'exit 0');
  if (present.includes('chromium')) {
    await writeFile(join(state, 'chromium'), '#!/bin/sh\n');
    await chmod(join(state, 'chromium'), 0o755);
  }
  for (const p of ['python3-torch', 'libopenblas0-pthread', 'mesa-vulkan-drivers'])
    if (present.includes(p)) await writeFile(join(state, p), '');
  await writeFile(join(state, 'os-release'), `ID=debian\nVERSION_CODENAME=${f.codename ?? 'trixie'}\n`);
  await mkdir(join(state, 'sources.list.d'));
  // the tests' python: `import torch` works once python3-torch is "installed"
  await writeFile(join(state, 'python3'), `#!${BASH}\n[ -e "${state}/python3-torch" ]\n`);
  await chmod(join(state, 'python3'), 0o755);
  await stub('id', `echo "id $*" >> "${log}"\n[ "$1" = -u ] && echo ${f.uid ?? 0}`);
  await stub(
    'dpkg-query',
    [
      `echo "dpkg-query $*" >> "${log}"`,
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a line of bash, not a template
      'pkg=${@: -1}',
      `[ -e "${state}/$pkg" ] || { echo "dpkg-query: no packages found matching $pkg" >&2; exit 1; }`,
      // (mesa-vulkan-drivers is checked by version: an installed one is new enough)
      `if [ "$3" = '\${Version}' ]; then printf '25.0.7-2'; else printf 'install ok installed'; fi`,
    ].join('\n'),
  );
  await stub('dpkg', `echo "dpkg $*" >> "${log}"\n[ "$1" = --compare-versions ] && [ "\${2%%.*}" -ge "$4" ]`);
  if (f.sudo)
    await stub(
      'sudo',
      `echo "sudo $*" >> "${log}"\n${f.sudo === 'ok' ? '[ "$1" = -n ] && shift\nexec "$@"' : 'echo "sudo: a password is required" >&2; exit 1'}`,
    );
  // true and env: real ones (sudo -n true, env DEBIAN_FRONTEND=... apt-get)
  for (const t of ['true', 'env', 'tee']) {
    const real = ['/usr/bin', '/bin'].map((d) => join(d, t)).find((p) => existsSync(p))!;
    symlinkSync(real, join(bin, t));
  }
  if (f.aptGet !== false) {
    const skip = f.aptInstallsNot ?? [];
    await stub(
      'apt-get',
      [
        chmodIt,
        `echo "apt-get $* DEBIAN_FRONTEND=\${DEBIAN_FRONTEND:-}" >> "${log}"`,
        'if [ "$1" = install ]; then',
        '  shift',
        '  for p in "$@"; do',
        '    case "$p" in',
        ...ALL.filter((p) => !skip.includes(p)).map((p) => `      ${p}) ${installs(p)} ;;`),
        '    esac',
        '  done',
        'fi',
      ].join('\n'),
    );
  }
}

function run(): { code: number | null; stderr: string; calls: string[] } {
  const r = spawnSync(BASH, [SCRIPT], {
    cwd: ROOT,
    env: {
      PATH: bin,
      PYTHON: join(state, 'python3'),
      TEST_TOOLS_CHROMIUM: join(state, 'chromium'),
      TEST_TOOLS_OS_RELEASE: join(state, 'os-release'),
      TEST_TOOLS_APT_SOURCES: join(state, 'sources.list.d'),
      HOME: work,
    },
    encoding: 'utf8',
    timeout: 30_000,
  });
  const calls = existsSync(log) ? readLog() : [];
  return { code: r.status, stderr: r.stderr, calls: calls.filter((c) => !/^(dpkg-query|dpkg|id) /.test(c)) };
}

function readLog(): string[] {
  return readFileSync(log, 'utf8').split('\n').filter(Boolean);
}

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-test-tools-'));
  bin = join(work, 'bin');
  state = join(work, 'state');
  log = join(work, 'calls.log');
  await mkdir(bin);
  await mkdir(state);
});

afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('scripts/test-tools.sh', () => {
  it('does nothing when every tool is there', async () => {
    await setup({ present: ALL, uid: 1000, sudo: 'ok' });
    const r = run();
    expect(r.code, r.stderr).toBe(0);
    expect(r.calls).toEqual([]);
    expect(r.stderr).toBe('');
  });

  it('as root: apt-get update, then one apt-get install -y of everything missing, non-interactive', async () => {
    await setup({ present: [], uid: 0 });
    const r = run();
    expect(r.code, r.stderr).toBe(0);
    expect(r.calls).toEqual([
      'apt-get update DEBIAN_FRONTEND=noninteractive',
      'apt-get install -y redis-server chromium python3-torch libopenblas0-pthread sentencepiece mesa-vulkan-drivers DEBIAN_FRONTEND=noninteractive',
    ]);
    expect(r.stderr).toContain('installed redis-server chromium python3-torch libopenblas0-pthread sentencepiece mesa-vulkan-drivers');
    // the tools are there now: a second run installs nothing
    await writeFile(log, '');
    expect(run()).toMatchObject({ code: 0, calls: [] });
  });

  it('installs only what is missing (OpenBLAS without torch, torch without OpenBLAS)', async () => {
    await setup({ present: ['redis-server', 'chromium', 'python3-torch', 'mesa-vulkan-drivers', 'sentencepiece'], uid: 0 });
    let r = run();
    expect(r.code, r.stderr).toBe(0);
    expect(r.calls).toEqual([
      'apt-get update DEBIAN_FRONTEND=noninteractive',
      'apt-get install -y libopenblas0-pthread DEBIAN_FRONTEND=noninteractive',
    ]);

    await rm(join(state, 'python3-torch'));
    await writeFile(log, '');
    r = run();
    expect(r.code, r.stderr).toBe(0);
    expect(r.calls).toEqual([
      'apt-get update DEBIAN_FRONTEND=noninteractive',
      'apt-get install -y python3-torch DEBIAN_FRONTEND=noninteractive',
    ]);
  });

  for (const uid of [0, 1000]) {
    it(`Debian 12 (${uid ? 'through sudo' : 'as root'}): Mesa from bookworm-backports, the source added once, the rest as usual`, async () => {
      await setup({
        present: ['chromium', 'python3-torch', 'libopenblas0-pthread', 'sentencepiece'],
        uid,
        sudo: 'ok',
        codename: 'bookworm',
      });
      const r = run();
      expect(r.code, r.stderr).toBe(0);
      const sudo = uid ? 'sudo -n env DEBIAN_FRONTEND=noninteractive ' : '';
      expect(r.calls.filter((c) => c.startsWith('apt-get') || c.startsWith('sudo -n env'))).toEqual([
        ...(uid ? [`${sudo}apt-get update`] : []),
        'apt-get update DEBIAN_FRONTEND=noninteractive',
        ...(uid ? [`${sudo}apt-get install -y redis-server`] : []),
        'apt-get install -y redis-server DEBIAN_FRONTEND=noninteractive',
        ...(uid ? [`${sudo}apt-get install -y -t bookworm-backports mesa-vulkan-drivers`] : []),
        'apt-get install -y -t bookworm-backports mesa-vulkan-drivers DEBIAN_FRONTEND=noninteractive',
      ]);
      if (uid) expect(r.calls).toContain(`sudo -n tee ${join(state, 'sources.list.d', 'debian-backports.sources')}`);
      expect(readFileSync(join(state, 'sources.list.d', 'debian-backports.sources'), 'utf8')).toContain('Suites: bookworm-backports\n');
      expect(r.stderr).toContain('adding bookworm-backports');
      // installed now: nothing more to do
      await writeFile(log, '');
      expect(run()).toMatchObject({ code: 0, calls: [] });
    });
  }

  it('not root: through sudo -n (never a password prompt)', async () => {
    await setup({
      present: ['chromium', 'python3-torch', 'libopenblas0-pthread', 'mesa-vulkan-drivers', 'sentencepiece'],
      uid: 1000,
      sudo: 'ok',
    });
    const r = run();
    expect(r.code, r.stderr).toBe(0);
    expect(r.calls).toEqual([
      'sudo -n true',
      'sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update',
      'apt-get update DEBIAN_FRONTEND=noninteractive',
      'sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server',
      'apt-get install -y redis-server DEBIAN_FRONTEND=noninteractive',
    ]);
  });

  for (const sudo of ['refuses', undefined] as const) {
    it(`not root and ${sudo ? 'sudo -n refused' : 'no sudo'}: says exactly what to install and exits 1, apt-get untouched`, async () => {
      await setup({ present: ['redis-server', 'python3-torch', 'mesa-vulkan-drivers', 'sentencepiece'], uid: 1000, sudo });
      const r = run();
      expect(r.code).toBe(1);
      expect(r.calls).toEqual(sudo ? ['sudo -n true'] : []);
      expect(r.stderr).toContain('not root, and sudo -n cannot run commands as root here');
      expect(r.stderr).toContain('  apt-get update && apt-get install -y chromium libopenblas0-pthread\n');
    });
  }

  it('no apt-get (not Debian): says what to install and exits 1', async () => {
    await setup({
      present: ['chromium', 'python3-torch', 'libopenblas0-pthread', 'mesa-vulkan-drivers', 'sentencepiece'],
      uid: 0,
      aptGet: false,
    });
    const r = run();
    expect(r.code).toBe(1);
    expect(r.calls).toEqual([]);
    expect(r.stderr).toContain('apt-get not found');
    expect(r.stderr).toContain('  apt-get update && apt-get install -y redis-server\n');
  });

  it('fails when apt-get install leaves a tool missing, naming it', async () => {
    await setup({
      present: ['redis-server', 'python3-torch', 'libopenblas0-pthread', 'mesa-vulkan-drivers', 'sentencepiece'],
      uid: 0,
      aptInstallsNot: ['chromium'],
    });
    const r = run();
    expect(r.code).toBe(1);
    expect(r.calls).toEqual([
      'apt-get update DEBIAN_FRONTEND=noninteractive',
      'apt-get install -y chromium DEBIAN_FRONTEND=noninteractive',
    ]);
    expect(r.stderr).toContain('still missing after apt-get install: chromium');
    expect(r.stderr).toContain('  apt-get update && apt-get install -y chromium\n');
  });

  it('fails when apt-get fails', async () => {
    await setup({ present: ['chromium', 'python3-torch', 'libopenblas0-pthread', 'mesa-vulkan-drivers', 'sentencepiece'], uid: 0 });
    await writeFile(join(bin, 'apt-get'), `#!${BASH}\necho "apt-get $*" >> "${log}"\necho "E: Could not get lock" >&2\nexit 100\n`);
    const r = run();
    expect(r.code).toBe(1);
    expect(r.calls).toEqual(['apt-get update']);
    expect(r.stderr).toContain('apt-get update failed');
    expect(r.stderr).toContain('  apt-get update && apt-get install -y redis-server\n');
  });
});
