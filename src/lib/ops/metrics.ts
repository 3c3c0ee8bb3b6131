import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

/** What the service counts, beyond requests: the plugins and routes report here. */
export interface ServiceMetrics {
  cozeExchange (outcome: string, seconds: number): void
  tokenRequest (cache: string): void
  resend (outcome: string, attempts: number): void
  oauthStateIssued (): void
  oauthCompletion (outcome: string): void
  /** Broker mode: a token handed out (hit, miss, shared) or refused (the error code), by app and caller. */
  brokerToken (app: string, caller: string, outcome: string): void
  /** Broker mode: Coze did not know an app's signing key and the next one was tried. */
  keyFailover (app: string): void
  /** Broker mode: a cached token was valid but not for the min_validity_seconds asked, so a new one was made. */
  forcedExchange (app: string, caller: string): void
  /** A connection closed or refused to bound its cost (lib/connection-guard.ts), by reason. */
  connectionClosed (reason: string): void
  /** A queued delivery job: accepted, delivered, failed, retried (put back), cancelled; `attempts` once it ended. */
  resendJob (outcome: string, attempts?: number): void
  /** A Feishu tenant_access_token fetch, by app and outcome (ok, or the error code). */
  feishuTokenFetch (app: string, outcome: string): void
  /** A value read when Prometheus scrapes (states in memory, Redis up). */
  gauge (name: string, help: string, read: () => number): void
  /** Values by one label, read when Prometheus scrapes. */
  gaugeByLabel (name: string, help: string, label: string, read: () => Record<string, number>): void
}

const noop = (): void => {}
export const disabledMetrics: ServiceMetrics = {
  cozeExchange: noop, tokenRequest: noop, resend: noop, oauthStateIssued: noop, oauthCompletion: noop, brokerToken: noop, keyFailover: noop, forcedExchange: noop, connectionClosed: noop, resendJob: noop, feishuTokenFetch: noop, gauge: noop, gaugeByLabel: noop
}

/**
 * A labelled metric's child for each set of label values, looked up by one string. prom-client hashes the label
 * object on every inc() or observe(); on the request path that was a measurable share of a cached /token.
 */
export function childrenOf<C> (metric: { labels: (...values: string[]) => C }): (...values: string[]) => C {
  const children = new Map<string, C>()
  return (...values) => {
    const key = values.join('\u0000')
    let child = children.get(key)
    if (child === undefined) {
      child = metric.labels(...values)
      children.set(key, child)
    }
    return child
  }
}

/** Counters in the given registry (one per app, so several apps in one process do not collide). */
export function createServiceMetrics (registry: Registry): ServiceMetrics {
  const registers = [registry]
  const cozeExchanges = new Counter({ name: 'coze_token_exchanges_total', help: 'Coze token exchanges by outcome', labelNames: ['outcome'], registers })
  const cozeDuration = new Histogram({
    name: 'coze_token_exchange_duration_seconds', help: 'Duration of Coze token exchanges', labelNames: ['outcome'], registers, buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
  })
  const tokenRequests = new Counter({ name: 'coze_token_requests_total', help: 'POST /token answers by token cache outcome (hit, miss, shared, off)', labelNames: ['cache'], registers })
  const resends = new Counter({ name: 'resend_requests_total', help: 'POST /resend by outcome', labelNames: ['outcome'], registers })
  const resendAttempts = new Histogram({ name: 'resend_attempts', help: 'Attempts per resend', registers, buckets: [1, 2, 3, 4, 5] })
  const statesIssued = new Counter({ name: 'oauth_states_issued_total', help: 'OAuth states stored by GET /api/auth-url', registers })
  const completions = new Counter({ name: 'oauth_completions_total', help: 'POST /api/complete-auth by outcome', labelNames: ['outcome'], registers })
  const brokerTokens = new Counter({ name: 'coze_broker_tokens_total', help: 'Broker tokens by app, caller and outcome (hit, miss, shared, or the error code)', labelNames: ['app', 'caller', 'outcome'], registers })
  const failovers = new Counter({ name: 'coze_key_failovers_total', help: 'Exchanges retried with an app\'s next key because Coze did not know the first', labelNames: ['app'], registers })
  const forced = new Counter({ name: 'coze_broker_forced_exchanges_total', help: 'Exchanges made although a cached token was valid, because the caller asked for more min_validity_seconds than it had left', labelNames: ['app', 'caller'], registers })
  const connectionsClosed = new Counter({ name: 'connections_closed_total', help: 'Connections closed or refused to bound their cost, by reason', labelNames: ['reason'], registers })
  const resendJobs = new Counter({ name: 'resend_jobs_total', help: 'Queued delivery jobs by outcome: accepted, delivered, failed, retried, cancelled', labelNames: ['outcome'], registers })
  const jobAttempts = new Histogram({ name: 'resend_job_attempts', help: 'Attempts per queued job, when it was delivered or failed', labelNames: ['outcome'], registers, buckets: [1, 2, 3, 5, 8, 13, 21] })
  const feishuFetches = new Counter({ name: 'feishu_token_fetches_total', help: 'Feishu tenant_access_token fetches by app and outcome', labelNames: ['app', 'outcome'], registers })
  const tokenRequest = childrenOf<Counter.Internal>(tokenRequests)
  const brokerToken = childrenOf<Counter.Internal>(brokerTokens)
  return {
    cozeExchange (outcome, seconds) {
      cozeExchanges.inc({ outcome })
      cozeDuration.observe({ outcome }, seconds)
    },
    tokenRequest (cache) { tokenRequest(cache).inc() },
    resend (outcome, attempts) {
      resends.inc({ outcome })
      resendAttempts.observe(attempts)
    },
    oauthStateIssued () { statesIssued.inc() },
    oauthCompletion (outcome) { completions.inc({ outcome }) },
    brokerToken (app, caller, outcome) { brokerToken(app, caller, outcome).inc() },
    keyFailover (app) { failovers.inc({ app }) },
    forcedExchange (app, caller) { forced.inc({ app, caller }) },
    connectionClosed (reason) { connectionsClosed.inc({ reason }) },
    resendJob (outcome, attempts) {
      resendJobs.inc({ outcome })
      if (attempts !== undefined) jobAttempts.observe({ outcome }, attempts)
    },
    feishuTokenFetch (app, outcome) { feishuFetches.inc({ app, outcome }) },
    gauge (name, help, read) {
      // prom-client calls collect() on each scrape; the registry keeps the gauge.
      new Gauge({ name, help, registers, collect () { this.set(read()) } })
    },
    gaugeByLabel (name, help, label, read) {
      new Gauge({
        name,
        help,
        labelNames: [label],
        registers,
        collect () {
          // A label value no longer read (a destination forgotten) leaves the series.
          this.reset()
          for (const [value, count] of Object.entries(read())) this.set({ [label]: value }, count)
        }
      })
    }
  }
}
