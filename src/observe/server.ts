// The operator's HTTP endpoint (METRICS_PORT): Prometheus metrics, and the probes a supervisor (Docker, Kubernetes,
// systemd) asks: /healthz (the process serves), /readyz (it can answer now, or what stops it). Its own port, so that
// it exists whatever adapters run (a Discord-only bot has no HTTP server of its own) and is never the users'.
import { timingSafeEqual } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { listen, urlHost } from '../../adapters/shared/http-server.js';
import type { BotMetrics } from './metrics.js';

export interface MetricsSettings {
  port: number;
  /** default 127.0.0.1: metrics tell how busy the bot is and what it runs, not for everyone */
  host: string;
  /** /metrics needs `Authorization: Bearer <key>` (the probes stay open: they say only ok or not) */
  key?: string;
}

/** The authorization header against the expected one, in constant time. */
function sameKey(got: string | undefined, want: string): boolean {
  const a = Buffer.from(got ?? '');
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

export interface MetricsServer {
  /** http://host:port */
  url: string;
  close(): Promise<void>;
}

/**
 * Serves `metrics` and the probes; `problems()` says what keeps this process from answering now (none: ready):
 * asked at each /readyz, so it should be quick. `stopped()`: chat adapters that stopped for good while the others
 * run on; /readyz lists them without saying not ready, because the process still answers on the others (and a
 * load balancer taking it out would stop those too).
 */
export async function startMetricsServer(
  settings: MetricsSettings,
  metrics: BotMetrics,
  problems: () => Promise<string[]>,
  stopped: () => readonly string[] = () => [],
): Promise<MetricsServer> {
  const send = (res: ServerResponse, status: number, type: string, body: string) => {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(body);
  };
  const json = (res: ServerResponse, status: number, body: unknown) => send(res, status, 'application/json', `${JSON.stringify(body)}\n`);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { error: 'only GET' });
    void (async () => {
      if (path === '/metrics') {
        if (settings.key && !sameKey(req.headers.authorization, `Bearer ${settings.key}`)) {
          res.setHeader('www-authenticate', 'Bearer');
          return json(res, 401, { error: 'the metrics need the key (METRICS_KEY) as a bearer token' });
        }
        return send(res, 200, metrics.registry.contentType, await metrics.registry.metrics());
      }
      if (path === '/healthz') return json(res, 200, { status: 'ok' });
      if (path === '/readyz') {
        const found = await problems().catch((err: unknown) => [`the readiness check failed: ${(err as Error).message}`]);
        const down = stopped();
        const also = down.length > 0 ? { stopped: down } : {};
        return json(
          res,
          found.length === 0 ? 200 : 503,
          found.length === 0 ? { ready: true, ...also } : { ready: false, problems: found, ...also },
        );
      }
      json(res, 404, { error: 'not found: /metrics, /healthz, /readyz' });
    })().catch((err: unknown) => {
      if (!res.headersSent) json(res, 500, { error: (err as Error).message });
      else res.destroy();
    });
  });
  await listen(server, settings.port, settings.host);
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${urlHost(settings.host)}:${port}`,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}
