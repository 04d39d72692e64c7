// Timers that stop while the tab is hidden and start again when it shows.

// Calls `task()` (async) every `intervalMs` after the previous call ended, never two at once.
// `onState(state, error)` hears "live", "paused" (tab hidden), "error" and "stopped".
export class Poller {
  constructor(task, intervalMs, onState) {
    this.task = task;
    this.intervalMs = intervalMs;
    this.onState = onState || (() => {});
    this.timer = null;
    this.busy = false;
    this.stopped = true;
    this.visibility = () => {
      if (this.stopped) return;
      if (document.hidden) {
        this.cancel();
        this.onState("paused");
      } else {
        this.now();
      }
    };
  }

  start({ immediately = true } = {}) {
    if (!this.stopped) return;
    this.stopped = false;
    document.addEventListener("visibilitychange", this.visibility);
    if (document.hidden) {
      this.onState("paused");
    } else if (immediately) {
      this.now();
    } else {
      this.schedule();
    }
  }

  stop() {
    this.stopped = true;
    this.cancel();
    document.removeEventListener("visibilitychange", this.visibility);
    this.onState("stopped");
  }

  cancel() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  schedule() {
    this.cancel();
    if (this.stopped || document.hidden) return;
    this.timer = setTimeout(() => this.now(), this.intervalMs);
  }

  async now() {
    this.cancel();
    if (this.stopped || document.hidden) return;
    if (this.busy) return;
    this.busy = true;
    try {
      await this.task();
      if (!this.stopped) this.onState(document.hidden ? "paused" : "live");
    } catch (error) {
      if (!this.stopped) this.onState("error", error);
    } finally {
      this.busy = false;
    }
    this.schedule();
  }
}

// Calls `fn()` every second (for durations that tick), only while the tab shows.
export class Ticker {
  constructor(fn, intervalMs = 1000) {
    this.fn = fn;
    this.intervalMs = intervalMs;
    this.timer = null;
    this.visibility = () => {
      if (document.hidden) {
        this.clear();
      } else if (this.on) {
        this.fn();
        this.arm();
      }
    };
    this.on = false;
  }

  start() {
    if (this.on) return;
    this.on = true;
    document.addEventListener("visibilitychange", this.visibility);
    this.arm();
  }

  stop() {
    this.on = false;
    this.clear();
    document.removeEventListener("visibilitychange", this.visibility);
  }

  arm() {
    this.clear();
    if (!document.hidden) this.timer = setInterval(() => this.fn(), this.intervalMs);
  }

  clear() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}
