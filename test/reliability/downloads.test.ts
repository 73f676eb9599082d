// Image downloads (issue 9): only the platforms' file hosts (plus the one configured test host), redirects to
// other hosts and to private or loopback addresses refused before any request reaches them, oversize and slow
// bodies refused within the limits. Both adapters' download functions against servers on loopback: a "platform"
// host (the configured one) and a trap host that must never see a request (nor, for Slack, the token).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { allowedUrl, downloadImage, downloadPolicy, ImageInputProblem } from '../../adapters/discord/images.js';
import { downloadSlackFile, FileInputError, isAllowedFileUrl } from '../../adapters/slack/files.js';
import { samples } from './hostile-inputs.js';

const TOKEN = 'xoxb-9999-8888-downloadtesttoken0123456789';

interface Host {
  server: Server;
  origin: string;
  hits: Array<{ url: string; auth?: string }>;
  connections: number;
}

async function host(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Host> {
  const h: Host = {
    server: createServer((req, res) => {
      h.hits.push({ url: req.url ?? '', auth: req.headers.authorization });
      handler(req, res);
    }),
    origin: '',
    hits: [],
    connections: 0,
  };
  h.server.on('connection', () => h.connections++);
  await new Promise<void>((r) => h.server.listen(0, '127.0.0.1', r));
  h.origin = `http://127.0.0.1:${(h.server.address() as AddressInfo).port}`;
  return h;
}

let platform: Host;
let trap: Host;
let png: Buffer;
const timers = new Set<NodeJS.Timeout>();

beforeAll(async () => {
  png = (await samples()).png;
  trap = await host((_req, res) => res.writeHead(200, { 'content-type': 'image/png' }).end(png));
  platform = await host((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const p = url.pathname;
    if (p.startsWith('/redirect')) {
      res.writeHead(302, { location: url.searchParams.get('to') ?? '/' }).end();
    } else if (p.startsWith('/image.png') || p.startsWith('/files-pri/')) {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': png.length }).end(png);
    } else if (p === '/big-declared') {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': 50 * 1024 * 1024 });
      res.write(png); // and then nothing: the declared length alone must refuse it
    } else if (p === '/big-chunked') {
      // No content-length: an endless body; the reader must stop at the cap.
      res.writeHead(200, { 'content-type': 'image/png' });
      const chunk = Buffer.concat([png, Buffer.alloc(64 * 1024)]);
      const push = () => {
        if (res.destroyed) return;
        if (res.write(chunk)) setImmediate(push);
        else res.once('drain', push);
      };
      push();
    } else if (p === '/trickle') {
      // Headers at once, then one byte every 50 ms: never done within the timeout.
      res.writeHead(200, { 'content-type': 'image/png' });
      let i = 0;
      const t = setInterval(() => {
        if (res.destroyed || i >= png.length) {
          clearInterval(t);
          timers.delete(t);
          res.end();
          return;
        }
        res.write(png.subarray(i, ++i));
      }, 50);
      timers.add(t);
    } else if (p === '/html') {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<html>Sign in</html>');
    } else {
      res.writeHead(404).end();
    }
  });
});

afterAll(async () => {
  for (const t of timers) clearInterval(t);
  for (const h of [platform, trap]) {
    h?.server.closeAllConnections();
    await new Promise<void>((r) => (h ? h.server.close(() => r()) : r()));
  }
});

describe('Discord downloads', () => {
  const policy = () => downloadPolicy({ apiUrl: `${platform.origin}/api`, maxBytes: 256 * 1024, timeoutMs: 1000 });
  const src = (url: string) => ({ url, name: 'x.png', where: 'attachment' as const });

  it("allows only Discord's CDN over https on its own port, and the configured host exactly", () => {
    const p = policy();
    const port = new URL(platform.origin).port;
    for (const ok of [
      'https://cdn.discordapp.com/attachments/1/2/a.png?ex=1',
      'https://media.discordapp.net/attachments/1/2/a.png',
      `${platform.origin}/image.png`,
    ]) {
      expect(allowedUrl(ok, p), ok).toBe(true);
    }
    for (const bad of [
      'http://cdn.discordapp.com/a.png', // not https
      'https://cdn.discordapp.com:8443/a.png', // another port
      'https://cdn.discordapp.com.evil.example/a.png',
      'https://evil.example/cdn.discordapp.com/a.png',
      'https://user:pw@cdn.discordapp.com/a.png',
      'https://cdn.discordapp.com@127.0.0.1/a.png',
      `https://127.0.0.1:${port}/image.png`, // the test host, but not with its scheme
      `${trap.origin}/image.png`, // loopback, another port
      'http://127.0.0.1/image.png',
      'http://localhost/image.png',
      'http://[::1]/image.png',
      'http://10.0.0.1/image.png',
      'http://192.168.1.1/image.png',
      'http://169.254.169.254/latest/meta-data/',
      'http://2130706433/image.png', // 127.0.0.1 as a number
      'file:///etc/passwd',
      'data:image/png;base64,AAAA',
      'not a url',
    ]) {
      expect(allowedUrl(bad, p), bad).toBe(false);
    }
  });

  it('downloads from the allowed host and follows a redirect that stays on it', async () => {
    const data = await downloadImage(src(`${platform.origin}/redirect?to=${encodeURIComponent('/image.png')}`), policy());
    expect(Buffer.from(data).equals(png)).toBe(true);
  });

  it('refuses redirects to other hosts and to private or loopback addresses; those never see a request', async () => {
    for (const to of [
      `${trap.origin}/image.png`,
      'http://169.254.169.254/latest/',
      'http://10.1.2.3/x.png',
      'https://evil.example/x.png',
      'http://localhost:1/x.png',
    ]) {
      const err = await downloadImage(src(`${platform.origin}/redirect?to=${encodeURIComponent(to)}`), policy()).catch((e: unknown) => e);
      expect(err, to).toBeInstanceOf(ImageInputProblem);
      expect((err as ImageInputProblem).kind).toBe('host');
      expect((err as Error).message).toMatch(/only download images from Discord/);
    }
    // A direct link to the trap is refused too.
    await expect(downloadImage(src(`${trap.origin}/image.png`), policy())).rejects.toThrow(/only download images from Discord/);
    expect(trap.connections).toBe(0);
  });

  it('refuses oversize bodies (declared, or counted while reading) and slow bodies', async () => {
    const t0 = performance.now();
    await expect(downloadImage(src(`${platform.origin}/big-declared`), policy())).rejects.toMatchObject({ kind: 'too_large' });
    await expect(downloadImage(src(`${platform.origin}/big-chunked`), policy())).rejects.toMatchObject({ kind: 'too_large' });
    await expect(downloadImage({ ...src(`${platform.origin}/image.png`), size: 10 * 1024 * 1024 }, policy())).rejects.toMatchObject({
      kind: 'too_large',
    });
    expect(performance.now() - t0).toBeLessThan(3000);
    const t1 = performance.now();
    const slow = await downloadImage(src(`${platform.origin}/trickle`), policy()).catch((e: unknown) => e);
    expect(slow).toBeInstanceOf(ImageInputProblem);
    expect((slow as ImageInputProblem).kind).toBe('timeout');
    expect(performance.now() - t1).toBeLessThan(2500);
  });
});

describe('Slack downloads', () => {
  const opts = () => ({ token: TOKEN, maxBytes: 256 * 1024, timeoutMs: 1000, apiUrl: `${platform.origin}/api/` });

  it("allows only Slack's file hosts over https, and the configured API origin exactly", () => {
    const api = `${platform.origin}/api/`;
    for (const ok of [
      'https://files.slack.com/files-pri/T1-F1/a.png',
      'https://files-edu.slack.com/files-pri/T1-F1/a.png',
      `${platform.origin}/files-pri/T1-F1/a.png`,
    ]) {
      expect(isAllowedFileUrl(ok, api), ok).toBe(true);
    }
    for (const bad of [
      'http://files.slack.com/files-pri/T1-F1/a.png',
      'https://files.slack.com:444/a.png',
      'https://files.slack.com.evil.example/a.png',
      'https://evil.slack.com.example/a.png',
      'https://slack.com/files-pri/a.png',
      'https://u:p@files.slack.com/a.png',
      `${trap.origin}/files-pri/T1-F1/a.png`,
      'http://127.0.0.1/a.png',
      'http://169.254.169.254/',
      'http://10.0.0.1/a.png',
      'file:///etc/passwd',
    ]) {
      expect(isAllowedFileUrl(bad, api), bad).toBe(false);
    }
  });

  it('refuses redirects off the allowed hosts before sending the token anywhere', async () => {
    const before = trap.hits.length;
    const platformBefore = platform.hits.length;
    for (const to of [`${trap.origin}/files-pri/T1-F1/a.png`, 'http://169.254.169.254/latest/', 'https://evil.example/a.png']) {
      const err = await downloadSlackFile(`${platform.origin}/redirect?to=${encodeURIComponent(to)}`, opts()).catch((e: unknown) => e);
      expect(err, to).toBeInstanceOf(FileInputError);
      expect((err as FileInputError).reason).toBe('refused');
    }
    expect(trap.hits.length).toBe(before);
    expect(trap.connections).toBe(0);
    // The redirect hop itself (on the allowed host) carried the token; nothing else did.
    expect(platform.hits.slice(platformBefore).every((h) => h.auth === `Bearer ${TOKEN}`)).toBe(true);
  });

  it('refuses oversize and slow bodies, and a sign-in page instead of the file', async () => {
    await expect(downloadSlackFile(`${platform.origin}/big-declared`, opts())).rejects.toMatchObject({ reason: 'too_large' });
    await expect(downloadSlackFile(`${platform.origin}/big-chunked`, opts())).rejects.toMatchObject({ reason: 'too_large' });
    const t1 = performance.now();
    await expect(downloadSlackFile(`${platform.origin}/trickle`, opts())).rejects.toMatchObject({ reason: 'timeout' });
    expect(performance.now() - t1).toBeLessThan(2500);
    await expect(downloadSlackFile(`${platform.origin}/html`, opts())).rejects.toMatchObject({ reason: 'scope' });
    const ok = await downloadSlackFile(`${platform.origin}/files-pri/T1-F1/a.png`, opts());
    expect(Buffer.from(ok).equals(png)).toBe(true);
  });
});
