// The official JavaScript client (socket.io-client 4.x) against a real campaign-live stack.
//
// Run by tests/test_js_client.py, which starts the server and the worker, creates two tenants
// and mints their tokens, and publishes events to RabbitMQ on this test's behalf:
//
//   POST $CONTROL_URL/publish  {"events": [<contract event>, ...]}  ->  {"published": n}
//
// answers once the broker confirmed every event. This file builds the events itself (the
// contract's inbound format) and checks only what a client sees (the contract's section 2).
//
// Environment: SERVER_URL, CONTROL_URL, TENANT, TOKEN, OTHER_TENANT, OTHER_TOKEN,
// EXPIRED_TOKEN (expired 10 s ago), BAD_TOKEN (signed with another secret).
//
// Run by hand against a running stack:  node --test --test-reporter=spec tests/js/contract.test.mjs

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, test } from "node:test";

import { io } from "socket.io-client";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/test_js_client.py sets it)`);
  return value;
};

const SERVER_URL = env("SERVER_URL");
const CONTROL_URL = env("CONTROL_URL");
const TENANT = env("TENANT");
const TOKEN = env("TOKEN");
const OTHER_TENANT = env("OTHER_TENANT");
const OTHER_TOKEN = env("OTHER_TOKEN");
const EXPIRED_TOKEN = env("EXPIRED_TOKEN");
const BAD_TOKEN = env("BAD_TOKEN");

const WAIT_MS = 15_000;
const TEST_TIMEOUT_MS = 60_000;
const CAMPAIGN_KEYS = [
  "id", "tenant_id", "name", "status", "total", "sent", "failed", "pending", "progress",
  "current_message", "last_error", "started_at", "updated_at", "completed_at", "version", "failure_alert",
].sort();
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

const TRANSPORTS = {
  websocket: ["websocket"],
  polling: ["polling"],
};

// helpers ------------------------------------------------------------------------------

/** A contract event; `offset` seconds after now, so status events keep their order. */
function event(tenant, campaign, type, data = {}, offset = 0) {
  return {
    event_id: randomUUID(),
    type,
    tenant_id: tenant,
    campaign_id: campaign,
    occurred_at: new Date(Date.now() + offset * 1000).toISOString(),
    data,
  };
}

async function publish(...events) {
  const response = await fetch(`${CONTROL_URL}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ events }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `publish failed: ${text}`);
  assert.deepEqual(JSON.parse(text), { published: events.length });
}

/** The tenant's latest seq, from the REST API (GET /api/events). */
async function storedSeq(token, afterSeq) {
  const response = await fetch(`${SERVER_URL}/api/events?after_seq=${afterSeq}&limit=1`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const text = await response.text();
  assert.equal(response.status, 200, `GET /api/events: ${text}`);
  return JSON.parse(text).seq;
}

async function waitFor(predicate, what, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const open = new Set();
after(() => {
  for (const socket of open) socket.disconnect();
});

/**
 * A client of the official library that records what it receives. Resolves once the
 * snapshot arrived; rejects with the `connect_error` when the server refuses.
 */
function connect(transports, auth) {
  const socket = io(SERVER_URL, {
    transports,
    auth,
    reconnection: false,
    forceNew: true,
    timeout: WAIT_MS,
  });
  open.add(socket);
  const seen = { snapshots: [], updates: [], resyncs: [], socket };
  socket.on("campaign_update", (update) => seen.updates.push(update));
  socket.on("resync", (payload) => seen.resyncs.push(payload));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no campaign_snapshot within ${WAIT_MS} ms`)), WAIT_MS);
    socket.on("campaign_snapshot", (snapshot) => {
      seen.snapshots.push(snapshot);
      clearTimeout(timer);
      resolve(seen);
    });
    socket.on("connect_error", (err) => {
      clearTimeout(timer);
      close(seen);
      reject(err);
    });
  });
}

function close(client) {
  client.socket.disconnect();
  open.delete(client.socket);
}

async function refusal(transports, auth) {
  const err = await connect(transports, auth).then(
    () => assert.fail("the server accepted the connection"),
    (error) => error,
  );
  assert.ok(err instanceof Error, `connect_error gives an Error, not ${err}`);
  return err.message;
}

function updateOf(client, campaign, type) {
  return waitFor(
    () => client.updates.find((u) => u.campaign.id === campaign && u.type === type),
    `${type} of ${campaign}`,
  );
}

function assertCampaign(campaign) {
  assert.deepEqual(Object.keys(campaign).sort(), CAMPAIGN_KEYS);
  assert.ok(["running", "paused", "completed", "failed", "cancelled"].includes(campaign.status), campaign.status);
  for (const key of ["total", "sent", "failed", "pending", "version"]) {
    assert.ok(Number.isInteger(campaign[key]), `${key} is an integer: ${campaign[key]}`);
  }
  assert.equal(typeof campaign.progress, "number");
  assert.ok(campaign.failure_alert === null || typeof campaign.failure_alert.rate === "number", "failure_alert");
  assert.ok(campaign.progress >= 0 && campaign.progress <= 1, `progress ${campaign.progress}`);
  assert.equal(campaign.pending, Math.max(campaign.total - campaign.sent - campaign.failed, 0));
  for (const key of ["started_at", "updated_at", "completed_at"]) {
    const value = campaign[key];
    assert.ok(value === null || RFC3339.test(value), `${key} is RFC 3339 or null: ${value}`);
  }
}

function assertUpdate(update, { type, campaign, replayed }) {
  assert.deepEqual(Object.keys(update).sort(), ["campaign", "replayed", "seq", "timestamp", "type"]);
  assert.ok(Number.isInteger(update.seq) && update.seq > 0, `seq ${update.seq}`);
  assert.equal(update.type, type);
  assert.equal(typeof update.timestamp, "string");
  assert.match(update.timestamp, RFC3339);
  assert.equal(update.replayed, replayed);
  assertCampaign(update.campaign);
  assert.equal(update.campaign.id, campaign);
}

// the tests, once per transport ------------------------------------------------------------

for (const [name, transports] of Object.entries(TRANSPORTS)) {
  describe(`socket.io-client over ${name}`, () => {
    const id = (what) => `js-${name}-${what}`;

    test("connecting with auth.token gives the snapshot", { timeout: TEST_TIMEOUT_MS }, async () => {
      const client = await connect(transports, { token: TOKEN });
      try {
        assert.ok(client.socket.connected);
        assert.equal(client.socket.io.engine.transport.name, name);
        const [snapshot] = client.snapshots;
        assert.deepEqual(Object.keys(snapshot).sort(), ["campaigns", "epoch", "seq"]);
        assert.ok(Number.isInteger(snapshot.seq) && snapshot.seq >= 0, `seq ${snapshot.seq}`);
        assert.ok(typeof snapshot.epoch === "string" && snapshot.epoch.length > 0, `epoch ${snapshot.epoch}`);
        assert.ok(Array.isArray(snapshot.campaigns));
        snapshot.campaigns.forEach(assertCampaign);
        assert.ok(snapshot.campaigns.every((c) => c.tenant_id === TENANT));
      } finally {
        close(client);
      }
    });

    test("a live campaign_update carries the contract's fields", { timeout: TEST_TIMEOUT_MS }, async () => {
      const client = await connect(transports, { token: TOKEN });
      try {
        const base = client.snapshots[0].seq;
        await publish(
          event(TENANT, id("live"), "campaign_started", { name: "JS live", total_messages: 4 }),
          event(TENANT, id("live"), "message_sent", { message_id: "m-1" }),
        );
        const started = await updateOf(client, id("live"), "campaign_started");
        assertUpdate(started, { type: "campaign_started", campaign: id("live"), replayed: false });
        assert.equal(started.seq, base + 1);
        assert.deepEqual(
          { ...started.campaign, started_at: null, updated_at: null },
          {
            id: id("live"), tenant_id: TENANT, name: "JS live", status: "running", total: 4, sent: 0, failed: 0,
            pending: 4, progress: 0, current_message: null, last_error: null, started_at: null, updated_at: null,
            completed_at: null, version: 1, failure_alert: null,
          },
        );
        assert.match(started.campaign.started_at, RFC3339);
        // a progress event: merged or not, its update follows within THROTTLE_SECONDS
        const sent = await updateOf(client, id("live"), "message_sent");
        assertUpdate(sent, { type: "message_sent", campaign: id("live"), replayed: false });
        assert.equal(sent.seq, base + 2);
        assert.equal(sent.campaign.sent, 1);
        assert.equal(sent.campaign.pending, 3);
        assert.equal(sent.campaign.progress, 0.25);
        assert.equal(sent.campaign.version, 2);
        assert.equal(client.socket.io.engine.transport.name, name);
      } finally {
        close(client);
      }
    });

    test("bad and expired tokens are refused with connect_error", { timeout: TEST_TIMEOUT_MS }, async () => {
      assert.equal(await refusal(transports, { token: BAD_TOKEN }), "unauthorized");
      assert.equal(await refusal(transports, { token: "not-a-jwt" }), "unauthorized");
      assert.equal(await refusal(transports, {}), "unauthorized");
      assert.equal(await refusal(transports, { token: EXPIRED_TOKEN }), "token_expired");
    });

    test("a client from another epoch gets resync epoch_changed, then the snapshot", { timeout: TEST_TIMEOUT_MS }, async () => {
      const first = await connect(transports, { token: TOKEN });
      const { epoch, seq } = first.snapshots[0];
      close(first);
      const same = await connect(transports, { token: TOKEN, epoch, last_seq: seq });
      const other = await connect(transports, { token: TOKEN, epoch: "an-epoch-gone-by", last_seq: seq });
      try {
        assert.deepEqual(same.resyncs, []);
        await waitFor(() => other.resyncs.length === 1 && other.snapshots.length === 1, "resync and snapshot");
        assert.deepEqual(other.resyncs[0], { reason: "epoch_changed" });
        assert.equal(other.snapshots[0].epoch, epoch);
        assert.ok(other.updates.every((u) => !u.replayed), "nothing replayed across epochs");
      } finally {
        close(same);
        close(other);
      }
    });

    test("reconnecting with auth.last_seq replays the missed updates", { timeout: TEST_TIMEOUT_MS }, async () => {
      const first = await connect(transports, { token: TOKEN });
      await publish(event(TENANT, id("recover"), "campaign_started", { name: "JS recover", total_messages: 3 }));
      const lastSeen = (await updateOf(first, id("recover"), "campaign_started")).seq;
      close(first);

      const missed = ["campaign_paused", "campaign_resumed", "campaign_paused"];
      await publish(...missed.map((type, i) => event(TENANT, id("recover"), type, {}, i + 1)));
      await waitFor(async () => (await storedSeq(TOKEN, lastSeen)) >= lastSeen + missed.length, "stored updates");

      const again = await connect(transports, { token: TOKEN, last_seq: lastSeen });
      try {
        await waitFor(() => again.updates.length >= missed.length, "replayed updates");
        assert.deepEqual(
          again.updates.map((u) => [u.seq, u.type, u.replayed, u.campaign.status]),
          missed.map((type, i) => [lastSeen + 1 + i, type, true, type === "campaign_resumed" ? "running" : "paused"]),
        );
        again.updates.forEach((u, i) => assertUpdate(u, { type: missed[i], campaign: id("recover"), replayed: true }));

        // the replay event: an ack with the last seq, then those updates again
        const answer = await again.socket.timeout(WAIT_MS).emitWithAck("replay", { after_seq: lastSeen });
        assert.deepEqual(answer, { ok: true, seq: lastSeen + missed.length });
        await waitFor(() => again.updates.length >= 2 * missed.length, "updates sent again by replay");
        assert.deepEqual(
          again.updates.slice(missed.length).map((u) => [u.seq, u.replayed, u.campaign.version]),
          again.updates.slice(0, missed.length).map((u) => [u.seq, true, u.campaign.version]),
        );
        const bad = await again.socket.timeout(WAIT_MS).emitWithAck("replay", { after_seq: "x" });
        assert.equal(bad.error, "bad_request");

        // then live ones again
        await publish(event(TENANT, id("recover"), "campaign_completed", {}, missed.length + 1));
        const live = await updateOf(again, id("recover"), "campaign_completed");
        assert.equal(live.seq, lastSeen + missed.length + 1);
        assert.equal(live.replayed, false);
        assert.equal(again.updates.length, 2 * missed.length + 1);
      } finally {
        close(again);
      }
    });

    test("another tenant's updates never arrive", { timeout: TEST_TIMEOUT_MS }, async () => {
      const mine = await connect(transports, { token: TOKEN });
      const theirs = await connect(transports, { token: OTHER_TOKEN });
      try {
        await publish(
          event(OTHER_TENANT, id("secret"), "campaign_started", { name: "Other only", total_messages: 2 }),
          event(OTHER_TENANT, id("secret"), "campaign_completed", {}, 1),
        );
        await updateOf(theirs, id("secret"), "campaign_completed");
        // a marker of my own tenant, published after: once it arrives, the other tenant's
        // updates have long been emitted
        await publish(event(TENANT, id("marker"), "campaign_started", { name: "Mine", total_messages: 1 }));
        await updateOf(mine, id("marker"), "campaign_started");
        await new Promise((resolve) => setTimeout(resolve, 300));
        assert.deepEqual([...new Set(mine.updates.map((u) => u.campaign.tenant_id))], [TENANT]);
        assert.ok(!JSON.stringify(mine.updates).includes(id("secret")));
        assert.ok(!JSON.stringify(mine.snapshots).includes(OTHER_TENANT));
        assert.deepEqual([...new Set(theirs.updates.map((u) => u.campaign.tenant_id))], [OTHER_TENANT]);
      } finally {
        close(mine);
        close(theirs);
      }
    });
  });
}
