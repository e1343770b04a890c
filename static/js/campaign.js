/* The campaign page: live figures, a messages-per-minute chart, failures and timeline. */
(function () {
  "use strict";

  var section = document.getElementById("campaign");
  var campaignId = section.getAttribute("data-id");
  var strings = JSON.parse(document.getElementById("i18n").textContent);
  var buckets = JSON.parse(document.getElementById("chart-data").textContent);
  var canvas = document.getElementById("chart");
  var detailsTimer = null;
  var live;

  function field(name) {
    return section.querySelector('[data-field="' + name + '"]');
  }

  function setText(name, value) {
    var element = field(name);
    if (element && element.textContent !== String(value)) {
      element.textContent = value;
    }
  }

  function minuteLabel(date) {
    return date.toISOString().slice(0, 16);
  }

  function count(previous, campaign) {
    var label = minuteLabel(new Date());
    var last = buckets[buckets.length - 1];
    if (!last || last.minute !== label) {
      last = { minute: label, sent: 0, failed: 0 };
      buckets.push(last);
      while (buckets.length > 30) {
        buckets.shift();
      }
    }
    last.sent += Math.max(campaign.sent - previous.sent, 0);
    last.failed += Math.max(campaign.failed - previous.failed, 0);
  }

  function draw() {
    var context = canvas.getContext("2d");
    var width = canvas.width;
    var height = canvas.height;
    context.clearRect(0, 0, width, height);
    var top = 1;
    buckets.forEach(function (b) { top = Math.max(top, b.sent + b.failed); });
    var slot = width / 30;
    buckets.forEach(function (b, i) {
      var x = i * slot + 2;
      var sentHeight = (b.sent / top) * (height - 20);
      var failedHeight = (b.failed / top) * (height - 20);
      context.fillStyle = "#2f9e6b";
      context.fillRect(x, height - sentHeight, slot - 4, sentHeight);
      context.fillStyle = "#d9534f";
      context.fillRect(x, height - sentHeight - failedHeight, slot - 4, failedHeight);
    });
    context.fillStyle = "#6b7280";
    context.font = "11px sans-serif";
    context.fillText(String(top) + (strings.per_minute || "/min"), 4, 12);
  }

  function renderList(list, items, build, emptyText) {
    list.textContent = "";
    if (!items.length && emptyText) {
      var empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = emptyText;
      list.appendChild(empty);
    }
    items.forEach(function (item) { list.appendChild(build(item)); });
  }

  function refreshDetails() {
    if (detailsTimer) {
      return;
    }
    detailsTimer = setTimeout(function () {
      detailsTimer = null;
      fetch("/api/campaigns/" + encodeURIComponent(campaignId), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (body) {
          if (!body) {
            return;
          }
          renderList(document.getElementById("reasons"), body.failure_reasons || [], function (r) {
            var li = document.createElement("li");
            li.setAttribute("data-reason", r.reason === null ? "" : r.reason);
            var reason = document.createElement("span");
            reason.className = "reason";
            reason.textContent = r.reason === null ? strings.other_reasons : r.reason;
            var count = document.createElement("span");
            count.className = "count";
            count.textContent = String(r.count);
            var share = document.createElement("span");
            share.className = "share";
            share.textContent = Math.round(r.share * 100) + "%";
            var bar = document.createElement("span");
            bar.className = "share-bar";
            var fill = document.createElement("span");
            fill.style.width = (r.share * 100).toFixed(1) + "%";
            bar.append(fill);
            li.append(reason, " ", count, " ", share, bar);
            return li;
          }, strings.no_failures);
          renderList(document.getElementById("failures"), body.recent_failures, function (f) {
            var li = document.createElement("li");
            var code = document.createElement("code");
            code.textContent = f.message_id;
            var error = document.createElement("span");
            error.className = "error";
            error.textContent = " " + f.error + " ";
            var time = document.createElement("time");
            time.textContent = f.occurred_at.slice(11, 19);
            li.append(code, error, time);
            return li;
          }, strings.no_failures);
          renderList(document.getElementById("timeline"), body.timeline, function (e) {
            var li = document.createElement("li");
            li.className = "t-" + e.type;
            var time = document.createElement("time");
            time.textContent = e.occurred_at.slice(11, 19) + " ";
            var label = document.createElement("span");
            label.setAttribute("data-type", e.type);
            label.textContent = strings.events[e.type] || e.type;
            li.append(time, label);
            var detail = e.data && (e.data.reason || e.data.error);
            if (detail) {
              var span = document.createElement("span");
              span.className = "detail";
              span.textContent = " " + detail;
              li.append(span);
            }
            return li;
          });
        });
    }, 1000);
  }

  function render(campaign, previous) {
    if (campaign.id !== campaignId) {
      return;
    }
    section.setAttribute("data-version", campaign.version);
    section.setAttribute("data-status", campaign.status);
    var percent = (campaign.progress * 100).toFixed(1);
    setText("name", campaign.name);
    var badge = field("status");
    badge.textContent = strings.status[campaign.status] || campaign.status;
    badge.className = "badge badge-" + campaign.status;
    var bar = field("bar");
    bar.style.width = percent + "%";
    bar.className = "fill status-" + campaign.status;
    setText("percent", percent + "%");
    ["sent", "failed", "pending", "total"].forEach(function (name) { setText(name, campaign[name]); });
    setText("current_message", campaign.current_message || "—");
    var banner = field("failure_alert");
    banner.textContent = live.alertText(campaign);
    banner.hidden = !campaign.failure_alert;
    var error = field("last_error");
    error.hidden = !campaign.last_error;
    setText("last_error", campaign.last_error || "");
    refreshRate(campaign);
    if (previous) {
      count(previous, campaign);
      draw();
      if (campaign.failed !== previous.failed || campaign.status !== previous.status) {
        refreshDetails();
      }
    }
  }

  function refreshRate(campaign) {
    var rate = live ? live.rate(campaign.id) : campaign.rate;
    setText("rate", rate === null || rate === undefined ? "—" : rate + (strings.per_minute || "/min"));
    setText("eta", live ? live.eta(campaign) : "—");
  }

  draw();
  live = new window.CampaignLive({ onCampaign: render }).start();
  setInterval(function () {
    if (live.campaigns[campaignId]) {
      refreshRate(live.campaigns[campaignId]);
    }
  }, 5000);
  window.campaignLive = live;
})();
