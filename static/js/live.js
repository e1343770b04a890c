/*
 * campaign-live live client (no build step): one Socket.IO connection per page.
 *
 * - reconnects itself: at most 10 attempts, 3 s first delay, doubling up to 30 s, with jitter;
 * - tracks `seq`: passes `last_seq` when it reconnects, asks for missing updates (`replay`),
 *   ignores what it already applied, and applies a campaign only when its `version` is newer;
 * - polls GET /api/campaigns (If-None-Match) every 10 s while the socket is down;
 * - shows the connection indicator and toasts (grouped failures, one summary after a reconnect).
 */
(function (global) {
  "use strict";

  var LOG = "[CAMPAIGN-WS]";
  var MAX_ATTEMPTS = 10;
  var FIRST_DELAY_MS = 3000;
  var MAX_DELAY_MS = 30000;
  var POLL_MS = 10000;
  var FAILURE_GROUP_MS = 3000;
  var AWAY_SETTLE_MS = 1500;
  var GAP_RETRY_MS = 3000;
  var RATE_WINDOW_MS = 60000;
  var TOAST_MS = 6000;
  var MAX_TOASTS = 5;
  var STATUS_TOASTS = {
    campaign_started: "started", campaign_paused: "paused", campaign_resumed: "resumed",
    campaign_completed: "completed", campaign_failed: "failed", campaign_cancelled: "cancelled"
  };

  function format(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_, key) {
      return values[key] === undefined || values[key] === null ? "" : String(values[key]);
    });
  }

  function readJson(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  function CampaignLive(options) {
    this.onCampaign = options.onCampaign || function () {};
    this.strings = readJson("i18n") || {};
    this.campaigns = {};
    this.samples = {};
    this.lastSeq = 0;
    this.ahead = {};
    this.attempt = 0;
    this.reconnectTimer = null;
    this.pollTimer = null;
    this.gapTimer = null;
    this.etag = null;
    this.wasConnected = false;
    this.awayBaseline = null;
    this.awayTimer = null;
    this.failureGroups = {};
    this.sentLastSeq = false;
    this.indicator = document.getElementById("connection");
    this.toasts = document.getElementById("toasts");
    var initial = readJson("initial-state") || { seq: 0, campaigns: [] };
    this.lastSeq = initial.seq || 0;
    this.epoch = initial.epoch || null;
    initial.campaigns.forEach(function (campaign) {
      this.campaigns[campaign.id] = campaign;
      this.sample(campaign);
    }, this);
    var button = this.indicator && this.indicator.querySelector(".reconnect");
    if (button) {
      button.addEventListener("click", this.reconnectNow.bind(this));
    }
    global.addEventListener("online", this.reconnectNow.bind(this));
  }

  CampaignLive.prototype.start = function () {
    var self = this;
    var url = global.location.origin;
    console.log(LOG, "connecting to " + url);
    this.setState("connecting");
    this.socket = global.io(url, {
      reconnection: false, // scheduled here, so the backoff and its log lines are exact
      transports: ["polling", "websocket"],
      withCredentials: true,
      auth: function (callback) {
        // epoch: the server answers resync "epoch_changed" when the tenant's seq started again.
        self.sentLastSeq = self.wasConnected;
        var auth = self.epoch ? { epoch: self.epoch } : {};
        if (self.wasConnected) {
          auth.last_seq = self.lastSeq;
        }
        callback(auth);
      }
    });
    this.socket.on("connect", function () { self.connected(); });
    this.socket.on("connect_error", function (error) { self.failed(error); });
    this.socket.on("disconnect", function (reason) { self.lost(reason); });
    this.socket.on("campaign_snapshot", function (snapshot) { self.snapshot(snapshot); });
    this.socket.on("campaign_update", function (update) { self.receive(update); });
    this.socket.on("resync", function (data) { self.resynced(data); });
    return this;
  };

  // connection life cycle --------------------------------------------------------------

  CampaignLive.prototype.connected = function () {
    var self = this;
    var engine = this.socket.io.engine;
    console.log(LOG, "connected");
    this.attempt = 0;
    this.resyncPending = false;
    this.wasConnected = true;
    this.setState("live", engine.transport.name);
    engine.once("upgrade", function () { self.setState("live", engine.transport.name); });
    this.stopPolling();
    if (this.awayBaseline) {
      clearTimeout(this.awayTimer);
      this.awayTimer = setTimeout(function () { self.summarizeAway(); }, AWAY_SETTLE_MS);
    }
  };

  CampaignLive.prototype.failed = function (error) {
    var message = error && error.message ? error.message : String(error);
    console.log(LOG, "connection error: " + message);
    this.setState("error");
    this.startPolling();
    this.scheduleReconnect();
  };

  CampaignLive.prototype.lost = function (reason) {
    console.log(LOG, "disconnected: " + reason);
    if (reason === "io client disconnect") {
      return;
    }
    if (!this.awayBaseline) {
      this.awayBaseline = JSON.parse(JSON.stringify(this.campaigns));
    }
    this.setState("connecting");
    this.scheduleReconnect();
  };

  CampaignLive.prototype.scheduleReconnect = function () {
    var self = this;
    if (this.reconnectTimer) {
      return;
    }
    if (this.attempt >= MAX_ATTEMPTS) {
      console.log(LOG, "giving up after " + MAX_ATTEMPTS + " attempts; polling every " + POLL_MS / 1000 + " s");
      this.setState("disconnected");
      this.startPolling();
      return;
    }
    this.attempt += 1;
    var base = Math.min(FIRST_DELAY_MS * Math.pow(2, this.attempt - 1), MAX_DELAY_MS);
    var delay = Math.round(Math.min(MAX_DELAY_MS, base * (1 + 0.25 * Math.random())));
    console.log(LOG, "reconnecting in " + delay + "ms (attempt " + this.attempt + "/" + MAX_ATTEMPTS + ")");
    this.reconnectTimer = setTimeout(function () {
      self.reconnectTimer = null;
      if (self.state !== "error") {
        self.setState("connecting");
      }
      self.socket.connect();
    }, delay);
  };

  CampaignLive.prototype.reconnectNow = function () {
    if (this.socket && this.socket.connected) {
      return;
    }
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.attempt = 0;
    this.setState("connecting");
    this.socket.connect();
  };

  CampaignLive.prototype.setState = function (state, transport) {
    this.state = state;
    if (!this.indicator) {
      return;
    }
    this.indicator.className = "connection state-" + state;
    this.indicator.setAttribute("data-state", state);
    this.indicator.setAttribute("data-transport", transport || "");
    this.indicator.querySelector(".label").textContent = this.strings[state] || state;
    this.indicator.querySelector(".transport").textContent = state === "live" && transport ? transport : "";
    var button = this.indicator.querySelector(".reconnect");
    if (button) {
      button.hidden = state !== "disconnected";
    }
    // The guide (docs/troubleshooting.md) for whoever sees the indicator turn red or grey.
    var help = this.indicator.querySelector(".help");
    if (help) {
      help.hidden = state !== "error" && state !== "disconnected";
    }
  };

  // REST fallback -----------------------------------------------------------------------

  CampaignLive.prototype.startPolling = function () {
    var self = this;
    if (this.pollTimer) {
      return;
    }
    console.log(LOG, "polling /api/campaigns every " + POLL_MS / 1000 + " s until the socket is back");
    this.poll();
    this.pollTimer = setInterval(function () { self.poll(); }, POLL_MS);
  };

  CampaignLive.prototype.stopPolling = function () {
    if (this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = null;
      console.log(LOG, "socket is back: polling stopped");
    }
  };

  CampaignLive.prototype.poll = function () {
    var self = this;
    var headers = { Accept: "application/json" };
    if (this.etag) {
      headers["If-None-Match"] = this.etag;
    }
    return fetch("/api/campaigns", { headers: headers, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 304 || !response.ok) {
          return null;
        }
        self.etag = response.headers.get("ETag");
        return response.json();
      })
      .then(function (body) {
        if (body) {
          body.campaigns.forEach(function (campaign) { self.apply(campaign, null); });
          if (self.indicator) {
            self.indicator.setAttribute("data-polled-at", new Date().toISOString());
          }
        }
      })
      .catch(function (error) { console.log(LOG, "polling failed: " + error); });
  };

  // updates -----------------------------------------------------------------------------

  CampaignLive.prototype.snapshot = function (snapshot) {
    // After a resync, or in another epoch (the tenant's seq started again from 1), seq restarts
    // from the snapshot. Versions of another epoch mean nothing here: they are forgotten (the
    // rows stay until updated); within one epoch a campaign still keeps its highest version
    // (what polling fetched while away may be ahead of the snapshot).
    var newEpoch = this.resyncReason === "epoch_changed" ||
      Boolean(this.epoch && snapshot.epoch && snapshot.epoch !== this.epoch);
    var replace = this.resyncPending || newEpoch;
    if (newEpoch) {
      this.campaigns = {};
    }
    snapshot.campaigns.forEach(function (campaign) { this.apply(campaign, null); }, this);
    this.snapshotSeq = snapshot.seq;
    if (replace) {
      console.log(LOG, "snapshot replaces our state from seq " + snapshot.seq);
      this.lastSeq = snapshot.seq;
      this.ahead = {};
    } else if (!this.sentLastSeq) {
      // A first connect: the snapshot is the truth from its seq on. After a reconnect with
      // last_seq, the replayed updates that follow move lastSeq instead.
      this.lastSeq = Math.max(this.lastSeq, snapshot.seq);
      this.ahead = {};
    }
    if (snapshot.epoch) {
      this.epoch = snapshot.epoch;
    }
    this.resyncPending = false;
    this.resyncReason = null;
    this.sentLastSeq = false;
  };

  CampaignLive.prototype.resynced = function (data) {
    // Any reason (history_expired, too_far_behind, epoch_changed): the snapshot that follows rules.
    console.log(LOG, "resync: " + (data && data.reason));
    this.ahead = {};
    this.resyncPending = true;
    this.resyncReason = data && data.reason;
  };

  CampaignLive.prototype.receive = function (update) {
    if (update.seq <= this.lastSeq || this.ahead[update.seq]) {
      return;
    }
    console.log(LOG, "received update: " + update.campaign.name + " " + update.type +
      (update.replayed ? " (replayed)" : ""));
    this.apply(update.campaign, update);
    if (update.seq === this.lastSeq + 1) {
      this.lastSeq = update.seq;
      while (this.ahead[this.lastSeq + 1]) {
        delete this.ahead[this.lastSeq + 1];
        this.lastSeq += 1;
      }
    } else {
      this.ahead[update.seq] = true;
      this.askForGap();
    }
  };

  CampaignLive.prototype.askForGap = function () {
    var self = this;
    if (this.gapTimer || !this.socket || !this.socket.connected) {
      return;
    }
    console.log(LOG, "missing updates after seq " + this.lastSeq + ": asking for them");
    this.socket.emit("replay", { after_seq: this.lastSeq });
    this.gapTimer = setTimeout(function () {
      self.gapTimer = null;
      if (Object.keys(self.ahead).length) {
        self.askForGap();
      }
    }, GAP_RETRY_MS);
  };

  CampaignLive.prototype.apply = function (campaign, update) {
    var previous = this.campaigns[campaign.id];
    if (previous && previous.version >= campaign.version) {
      return false;
    }
    this.campaigns[campaign.id] = campaign;
    this.sample(campaign);
    campaign.rate = this.rate(campaign.id);
    this.onCampaign(campaign, previous || null, update);
    if (update && !update.replayed && !this.awayBaseline) {
      this.toastFor(update, campaign, previous);
    }
    return true;
  };

  // send rate from the counts seen over the last minute (messages per minute)
  CampaignLive.prototype.sample = function (campaign) {
    var now = Date.now();
    var list = this.samples[campaign.id] || (this.samples[campaign.id] = []);
    list.push([now, campaign.sent + campaign.failed]);
    while (list.length > 2 && now - list[0][0] > RATE_WINDOW_MS) {
      list.shift();
    }
  };

  CampaignLive.prototype.rate = function (id) {
    var list = this.samples[id] || [];
    var campaign = this.campaigns[id];
    if (list.length < 2 || list[list.length - 1][0] - list[0][0] < 5000) {
      return campaign && campaign.rate !== undefined ? campaign.rate : null;
    }
    var first = list[0];
    var last = list[list.length - 1];
    return Math.round((last[1] - first[1]) / ((last[0] - first[0]) / 60000));
  };

  CampaignLive.prototype.eta = function (campaign) {
    if (campaign.status !== "running") {
      return "—";
    }
    if (!campaign.pending) {
      return this.strings.eta_done || "done";
    }
    var rate = this.rate(campaign.id);
    if (!rate || rate <= 0) {
      return "—";
    }
    var minutes = campaign.pending / rate;
    return minutes < 1 ? Math.ceil(minutes * 60) + " s" : Math.ceil(minutes) + " min";
  };

  // toasts ------------------------------------------------------------------------------

  CampaignLive.prototype.toast = function (kind, text) {
    if (!this.toasts) {
      return;
    }
    var element = document.createElement("div");
    element.className = "toast toast-" + kind;
    element.setAttribute("role", kind === "error" ? "alert" : "status");
    element.textContent = text;
    this.toasts.appendChild(element);
    while (this.toasts.children.length > MAX_TOASTS) {
      this.toasts.removeChild(this.toasts.firstChild);
    }
    setTimeout(function () { element.remove(); }, TOAST_MS);
  };

  // The failure alert's banner text (the pages' template says the same: _macros.html).
  CampaignLive.prototype.alertText = function (campaign) {
    var alert = campaign.failure_alert;
    if (!alert) {
      return "";
    }
    return format(this.strings.failure_alert || "%(rate)s", {
      rate: Math.round(alert.rate * 100) + "%",
      window: Math.round(alert.window_seconds),
      since: String(alert.since).slice(11, 19) + " UTC"
    });
  };

  CampaignLive.prototype.toastFor = function (update, campaign, previous) {
    if (campaign.failure_alert && !(previous && previous.failure_alert)) {
      this.toast("error", format(this.strings.failure_alert_toast || "%(name)s", {
        name: campaign.name, rate: Math.round(campaign.failure_alert.rate * 100) + "%"
      }));
    }
    var key = STATUS_TOASTS[update.type];
    if (key && (!previous || previous.status !== campaign.status || update.type === "campaign_started")) {
      var kind = key === "failed" ? "error" : key === "completed" ? "success" : "info";
      this.toast(kind, format(this.strings[key] || key, { name: campaign.name, error: campaign.last_error }));
    }
    var newFailures = previous ? campaign.failed - previous.failed : 0;
    if (newFailures > 0) {
      this.groupFailures(campaign, newFailures);
    }
  };

  CampaignLive.prototype.groupFailures = function (campaign, count) {
    var self = this;
    var group = this.failureGroups[campaign.id];
    if (group) {
      group.count += count;
      return;
    }
    this.failureGroups[campaign.id] = { count: count };
    setTimeout(function () {
      var total = self.failureGroups[campaign.id].count;
      delete self.failureGroups[campaign.id];
      var template = total === 1 ? self.strings.message_failed : self.strings.messages_failed;
      self.toast("warning", format(template || "%(count)s messages failed in %(name)s",
        { count: total, name: self.campaigns[campaign.id].name }));
    }, FAILURE_GROUP_MS);
  };

  CampaignLive.prototype.summarizeAway = function () {
    var before = this.awayBaseline || {};
    this.awayBaseline = null;
    var counts = { started: 0, completed: 0, paused: 0, failed: 0, sent: 0, failures: 0 };
    Object.keys(this.campaigns).forEach(function (id) {
      var now = this.campaigns[id];
      var then = before[id];
      if (!then) {
        counts.started += 1;
      } else if (then.status !== now.status && counts[now.status] !== undefined) {
        counts[now.status] += 1;
      }
      counts.sent += now.sent - (then ? then.sent : 0);
      counts.failures += now.failed - (then ? then.failed : 0);
    }, this);
    var s = this.strings;
    var parts = [];
    [["started", "away_started"], ["completed", "away_completed"], ["paused", "away_paused"],
      ["failed", "away_failed"], ["sent", "away_messages"], ["failures", "away_message_failures"]]
      .forEach(function (pair) {
        if (counts[pair[0]] > 0) {
          parts.push(format(s[pair[1]] || "%(count)s " + pair[0], { count: counts[pair[0]] }));
        }
      });
    if (parts.length) {
      this.toast("info", format(s.away || "While you were away: %(summary)s", { summary: parts.join(", ") }));
    }
  };

  global.CampaignLive = CampaignLive;
  global.campaignLiveFormat = format;
})(window);
