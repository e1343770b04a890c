/* The ops page: renders GET /ops/status, polls it, and requeues or discards dead letters.
   Everything from the broker (reasons, bodies) is untrusted: it only ever goes into textContent. */
(function () {
  "use strict";

  var root = document.getElementById("ops");
  var strings = JSON.parse(document.getElementById("i18n").textContent);
  var pollMs = Math.max(parseFloat(root.getAttribute("data-poll-seconds")) || 3, 1) * 1000;
  var csrf = root.getAttribute("data-csrf");
  var state = document.getElementById("ops-state");
  var timer = null;

  function format(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_, name) { return String(values[name]); });
  }

  function setText(name, value) {
    var element = root.querySelector('[data-field="' + name + '"]');
    if (element) {
      element.textContent = value === null || value === undefined ? "—" : String(value);
    }
  }

  function cell(text, className) {
    var td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    td.textContent = text === null || text === undefined ? "—" : String(text);
    return td;
  }

  function fill(id, items, build, columns) {
    var body = document.getElementById(id);
    body.textContent = "";
    if (!items.length) {
      var tr = document.createElement(columns ? "tr" : "li");
      if (columns) {
        var td = cell(strings.none);
        td.colSpan = columns;
        tr.appendChild(td);
      } else {
        tr.textContent = strings.none;
      }
      tr.className = "empty";
      body.appendChild(tr);
    }
    items.forEach(function (item) { body.appendChild(build(item)); });
  }

  function button(action, fields, what) {
    var b = document.createElement("button");
    b.type = "button";
    b.className = "ops-" + action;
    b.textContent = strings[action];
    b.addEventListener("click", function () {
      if (!window.confirm(format(strings["confirm_" + action], { what: what }))) {
        return;
      }
      act(action, fields);
    });
    return b;
  }

  function act(action, fields) {
    var body = new URLSearchParams(fields);
    fetch("/ops/dead-letters/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrf },
      body: body
    })
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        setText("action_result", answer.error ? answer.message : format(strings.done, answer));
        refresh();
      });
  }

  function seconds(value) {
    return value === null || value === undefined ? "—" : value.toFixed(value < 10 ? 3 : 1) + " s";
  }

  function renderWorkers(w) {
    setText("consumers", w.error ? null : w.consumers);
    setText("depth", w.error ? null : w.depth);
    setText("events_per_second", w.events_per_second);
    setText("lag_p50", seconds(w.lag_seconds && w.lag_seconds.p50));
    setText("lag_p95", seconds(w.lag_seconds && w.lag_seconds.p95));
    setText("lag_max", seconds(w.lag_seconds && w.lag_seconds.max));
    setText("workers_note", w.error || (w.sample ? format(strings.sample, { n: w.sample }) : strings.idle));
  }

  function renderDeadLetters(d) {
    if (d.error) {
      setText("dead_total", null);
      setText("dead_note", d.error);
      return;
    }
    setText("dead_total", d.total);
    setText("dead_note", d.scanned < d.total ? format(strings.scanned, d) : "");
    fill("dead-reasons", d.by_reason, function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-reason", r.reason);
      var actions = cell("");
      var what = format(strings.all_of, { reason: r.reason });
      actions.append(button("requeue", { reason: r.reason }, what), button("discard", { reason: r.reason }, what));
      tr.append(cell(r.reason), cell(r.count, "num"), actions);
      return tr;
    }, 3);
    fill("dead-letters", d.newest, function (letter) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-id", letter.id);
      var body = document.createElement("td");
      var code = document.createElement("code");
      code.textContent = letter.body.length > 160 ? letter.body.slice(0, 160) + "…" : letter.body;
      code.title = letter.body;
      body.appendChild(code);
      var actions = cell("");
      actions.append(
        button("requeue", { id: letter.id }, strings.this_one),
        button("discard", { id: letter.id }, strings.this_one)
      );
      var at = letter.rejected_at ? letter.rejected_at.replace("T", " ").slice(0, 19) : null;
      tr.append(cell(at, "when"), cell(letter.reason), cell(letter.routing_key), body, actions);
      return tr;
    }, 5);
  }

  function renderSockets(s) {
    setText("clients_total", s.clients);
    fill("servers", s.servers, function (server) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-server", server.id);
      var name = server.host + " (pid " + server.pid + ")" + (server.this ? " · " + strings.this_server : "");
      tr.append(
        cell(name),
        cell(server.transports.websocket || 0, "num"),
        cell(server.transports.polling || 0, "num"),
        cell(server.seen_at.slice(11, 19))
      );
      return tr;
    }, 4);
    fill("tenants", s.tenants, function (t) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-tenant", t.tenant_id);
      tr.append(cell(t.tenant_id), cell(t.clients, "num"));
      return tr;
    }, 2);
  }

  function renderErrors(errors) {
    fill("errors", errors, function (e) {
      var li = document.createElement("li");
      li.className = "level-" + e.level;
      li.textContent = e.at.slice(11, 19) + " " + e.level + " " + e.logger + ": " + e.message;
      return li;
    });
  }

  function render(status) {
    renderWorkers(status.workers);
    renderDeadLetters(status.dead_letters);
    renderSockets(status.sockets);
    renderErrors(status.errors);
    root.setAttribute("data-generated-at", status.generated_at);
    state.setAttribute("data-state", "live");
    state.querySelector(".label").textContent = format(strings.updated, { time: status.generated_at.slice(11, 19) });
  }

  function refresh() {
    clearTimeout(timer);
    fetch("/ops/status", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(render)
      .catch(function (error) {
        state.setAttribute("data-state", "error");
        state.querySelector(".label").textContent = format(strings.failed, { error: error.message });
      })
      .then(schedule);
  }

  function schedule() {
    clearTimeout(timer);
    // A hidden tab does not poll: the figures are only worth their queries while someone looks.
    if (!document.hidden) {
      timer = setTimeout(refresh, pollMs);
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
  render(JSON.parse(document.getElementById("ops-status").textContent));
  schedule();
})();
