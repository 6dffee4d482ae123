// The live event stream: one EventSource on /api/v1/events.
//
// The first connection asks for ?since=<index of the lists just loaded>, so nothing
// between loading and connecting is missed. The browser reconnects by itself and
// sends Last-Event-ID (the index of the last event it got), which the scheduler
// replays from exactly. `reset` (history no longer kept) and `resync` (this client
// was too slow) mean events were lost: the lists are loaded again.

export const EVENT_TYPES = [
  "job.created",
  "job.state",
  "job.progress",
  "job.pending",
  "job.checkpoint",
  "node.registered",
  "node.forgotten",
  "node.state",
  "node.metrics",
  "stats.sample",
  "job.usage",
];
//: events sent to live subscribers only
const LIVE_ONLY = new Set(["stats.sample", "job.usage"]);

//: after the stream was closed for good (an HTTP error), wait this long, doubling
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 15000;

export class LiveStream {
  /**
   * onEvent(event): one decoded event {index, type, ts, job_id, node_id, data}
   * onLost(): events may have been missed; reload everything
   * onStatus(status): "connecting" | "live" | "reconnecting"
   * canReconnect(): resolves true when it is worth connecting again (session still valid)
   */
  constructor({ onEvent, onLost, onStatus, canReconnect }) {
    this.onEvent = onEvent;
    this.onLost = onLost;
    this.onStatus = onStatus;
    this.canReconnect = canReconnect;
    this.source = null;
    this.last = 0;
    this.retryMs = RETRY_MIN_MS;
    this.timer = null;
    this.stopped = true;
  }

  start(since) {
    this.stopped = false;
    this.last = Math.max(this.last, since || 0);
    this.connect();
  }

  connect() {
    this.close();
    if (this.stopped) return;
    this.onStatus(this.source ? "reconnecting" : "connecting");
    const es = new EventSource(`/api/v1/events?since=${this.last}`);
    this.source = es;
    const handle = (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch {
        return;
      }
      // Samples are sent live and never kept: their index is not theirs (the last kept
      // event's), they are not replayed, and they move nothing on.
      if (LIVE_ONLY.has(event.type)) {
        this.onEvent(event);
        return;
      }
      if (event.index <= this.last) return;
      this.last = event.index;
      this.onEvent(event);
    };
    for (const type of EVENT_TYPES) es.addEventListener(type, handle);
    es.addEventListener("reset", (msg) => {
      const id = Number(msg.lastEventId);
      if (id) this.last = id;
      this.onLost("reset");
    });
    es.addEventListener("resync", () => this.onLost("resync"));
    es.onopen = () => {
      this.retryMs = RETRY_MIN_MS;
      this.onStatus("live");
    };
    es.onerror = () => {
      if (es !== this.source) return;
      if (es.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself, with Last-Event-ID.
        this.onStatus("reconnecting");
        return;
      }
      // Closed for good (an HTTP error such as 401 or 503): try again later ourselves.
      this.onStatus("reconnecting");
      this.scheduleRetry();
    };
  }

  scheduleRetry() {
    clearTimeout(this.timer);
    const delay = this.retryMs;
    this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    this.timer = setTimeout(async () => {
      if (this.stopped) return;
      if (await this.canReconnect()) this.connect();
    }, delay);
  }

  close() {
    if (this.source) {
      this.source.onerror = null;
      this.source.close();
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.close();
    this.source = null;
  }
}
