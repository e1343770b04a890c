/* The dashboard: one row per campaign, updated in place (only the cells that changed). */
(function () {
  "use strict";

  var ORDER = { running: 0, paused: 1, completed: 2, failed: 3, cancelled: 4 };
  var table = document.getElementById("campaigns");
  var body = table.querySelector("tbody");
  var template = document.getElementById("row-template");
  var filter = table.getAttribute("data-filter") || "";
  var strings = JSON.parse(document.getElementById("i18n").textContent);
  var live;

  function percent(campaign) {
    return (campaign.progress * 100).toFixed(1);
  }

  function setText(row, field, value) {
    var cell = row.querySelector('[data-field="' + field + '"]');
    if (cell && cell.textContent !== String(value)) {
      cell.textContent = value;
    }
    return cell;
  }

  function rank(row) {
    return [ORDER[row.getAttribute("data-status")], (row.querySelector('[data-field="name"]').textContent || "")
      .toLowerCase()];
  }

  function place(row) {
    var key = rank(row);
    var rows = body.querySelectorAll("tr[data-id]");
    for (var i = 0; i < rows.length; i += 1) {
      if (rows[i] === row) {
        continue;
      }
      var other = rank(rows[i]);
      if (other[0] > key[0] || (other[0] === key[0] && other[1] > key[1])) {
        body.insertBefore(row, rows[i]);
        return;
      }
    }
    body.appendChild(row);
  }

  function newRow(campaign) {
    var row = template.content.firstElementChild.cloneNode(true);
    row.setAttribute("data-id", campaign.id);
    row.querySelector('[data-field="name"]').setAttribute("href", "/campaigns/" + encodeURIComponent(campaign.id));
    var empty = body.querySelector("tr.empty");
    if (empty) {
      empty.remove();
    }
    return row;
  }

  function render(campaign, previous) {
    var row = body.querySelector('tr[data-id="' + CSS.escape(campaign.id) + '"]');
    var created = !row;
    if (created) {
      row = newRow(campaign);
    }
    var moved = created || row.getAttribute("data-status") !== campaign.status ||
      (previous && previous.name !== campaign.name);
    row.setAttribute("data-version", campaign.version);
    row.setAttribute("data-status", campaign.status);
    setText(row, "name", campaign.name);
    var banner = setText(row, "failure_alert", live ? live.alertText(campaign) : "");
    banner.hidden = !campaign.failure_alert;
    var badge = setText(row, "status", strings.status[campaign.status] || campaign.status);
    badge.className = "badge badge-" + campaign.status;
    var bar = row.querySelector('[data-field="bar"]');
    var width = percent(campaign) + "%";
    if (bar.style.width !== width) {
      bar.style.width = width;
      bar.parentNode.setAttribute("aria-valuenow", percent(campaign));
    }
    bar.className = "fill status-" + campaign.status;
    setText(row, "percent", percent(campaign) + "%");
    setText(row, "sent", campaign.sent);
    setText(row, "failed", campaign.failed);
    setText(row, "pending", campaign.pending);
    refreshRate(row, campaign);
    row.hidden = Boolean(filter) && campaign.status !== filter;
    if (moved) {
      place(row);
    }
    if (!created && previous) {
      row.classList.remove("flash");
      void row.offsetWidth; // restart the highlight animation
      row.classList.add("flash");
    }
  }

  function refreshRate(row, campaign) {
    var rate = live ? live.rate(campaign.id) : campaign.rate;
    setText(row, "rate", rate === null || rate === undefined ? "—" : rate + (strings.per_minute || "/min"));
    setText(row, "eta", live ? live.eta(campaign) : "—");
  }

  live = new window.CampaignLive({ onCampaign: render }).start();
  setInterval(function () {
    Object.keys(live.campaigns).forEach(function (id) {
      var row = body.querySelector('tr[data-id="' + CSS.escape(id) + '"]');
      if (row) {
        refreshRate(row, live.campaigns[id]);
      }
    });
  }, 5000);
  window.campaignLive = live;
})();
