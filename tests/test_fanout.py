"""Direct websocket writes (sockets/fanout.py): every frame arrives, whole and in order, on both
paths; a client that stops reading never blocks the emitter; the switch turns them off."""

import os

import pytest
import requests

from tests import support
from tests.support import metric
from tests.test_pipeline import started, status

PACKETS = "campaign_live_socketio_packets_sent_total"


def run_child(scenario, *args):
    """Run one scenario of tests/fanout_child.py in its own process; its JSON findings."""
    return support.child_findings("tests.fanout_child", scenario, *args)


def test_frames_stay_whole_and_in_order_when_the_client_stops_reading():
    """A real python-engineio socket and writer over a real eventlet websocket with 4 KB buffers."""
    found = run_child("stream", 400)
    assert found["emitter_sent_before_peer_read"] == 400, "the emitter blocked on a client that does not read"
    assert found["frames"] == 400
    assert found["all_final_text_frames"]
    assert found["in_order"], f"frame {found['first_out_of_place']} out of place"
    # Both paths and the background finish of a partly written frame were exercised.
    assert found["direct"] > 0 and found["queued"] > 0 and found["partial"] > 0, found
    assert not found["compressed_websocket_is_direct"]


def test_a_direct_write_never_overtakes_the_frames_the_writer_holds():
    """Issue 11: a slow reader, emits that go on, and python-engineio's writer holding a packet it
    took off the queue while the background finish of a partly written frame had the send lock.
    eventlet's release only schedules the writer, so a direct write right after it could go first."""
    found = run_child("overtake", 5)
    # The interleaving happened in every round (otherwise the test proves nothing).
    assert found["partial"] == found["rounds"], found
    assert found["writer_waited_holding_a_packet"] == found["rounds"], found
    assert found["emitted_while_writer_scheduled"] == found["rounds"], found
    assert found["all_final_text_frames"]
    assert found["in_order"], f"frame {found['first_out_of_place']} out of place: {found['numbers']}"


def test_a_burst_of_updates_reaches_an_idle_client_in_one_write_and_in_order():
    """Updates that arrive together (merged progress falling due at once, then a status change)
    cost one send() per client, not one per update; a busy connection gets them through its
    queue; the order holds on both paths."""
    found = run_child("burst")
    assert found["sends_for_an_idle_writer"] == 1, found
    assert found["queued_while_busy"] == 3, found
    assert found["direct"] == 9, found  # 7 of the bursts, 2 of the room emit
    assert found["seqs"] == list(range(1, 11)), found
    assert found["event_names"] == ["campaign_update"], found
    assert found["frames_built_for_a_room_emit"] == 1, found
    assert found["room_emit_received"] == ['42["campaign_snapsho'] * 2, found


def test_a_failed_finish_closes_the_connection_without_writing_after_half_a_frame():
    found = run_child("failed-finish")
    assert found["finish_failed"] and found["partial"] == 1, found
    # Half of the first frame at most, and nothing after it.
    assert found["received_is_a_prefix_of_the_frames_in_order"], found
    assert found["received"] < found["first_frame_length"], found
    # The failure closed the connection: the peer saw the end of the stream within 5 s (TCP's
    # zero-window probes pace the last bytes), and python-engineio closed its socket (disconnect
    # handlers ran).
    assert found["peer_saw_end_of_stream"], found
    assert found["broken"] == 1, found
    assert found["engineio_socket_closed"], found


def packets_sent(server):
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {path: metric(text, PACKETS, path=path) for path in ("direct", "queued")}


def room_traffic(stack, tenant, publisher, server, clients_count=4, changes=10):
    """Connect clients to ``server``, publish status changes (each emitted at once), and return
    the clients once each has every update, with the server's packet counts before and after."""
    clients = [stack.client(tenant, server=server) for _ in range(clients_count)]
    polling = stack.client(tenant, server=server, transports=["polling"])
    try:
        before = packets_sent(server)
        publisher.publish(started(tenant, "fan", 100))
        for i in range(changes):
            kind = "campaign_paused" if i % 2 == 0 else "campaign_resumed"
            publisher.publish(status(tenant, "fan", kind, i + 1))
        for client in [*clients, polling]:
            client.wait_for(lambda updates: len(updates) >= changes + 1, 15, f"{changes + 1} updates")
        after = packets_sent(server)
        return [*clients, polling], before, after
    finally:
        for client in [*clients, polling]:
            client.close()


def assert_every_update_in_order(clients, changes):
    for client in clients:
        seqs = client.seqs()
        assert len(seqs) == changes + 1
        assert seqs == list(range(seqs[0], seqs[0] + changes + 1)), seqs


def test_room_updates_are_written_straight_to_the_websockets(stack, tenant, publisher):
    changes = 10
    clients, before, after = room_traffic(stack, tenant, publisher, stack.servers[0], changes=changes)
    assert_every_update_in_order(clients, changes)
    if os.environ.get("ASYNC_MODE", "eventlet") != "eventlet":
        # Direct writes are eventlet's only: the other modes send everything the stock way.
        assert before == after == {"direct": 0, "queued": 0}
        assert "keeps the stock path" in stack.servers[0].log()
        return
    # 4 websocket clients x 11 updates went direct; the long-polling client's 11 were queued.
    assert after["direct"] - before["direct"] >= 4 * (changes + 1)
    assert after["queued"] - before["queued"] >= changes + 1


@pytest.fixture
def stock_server(stack):
    server = stack.start_server(DIRECT_WEBSOCKET_WRITES="0")
    yield server
    server.stop()
    stack.servers.remove(server)


def test_direct_writes_off_sends_everything_through_python_engineio(stack, tenant, publisher, stock_server):
    changes = 6
    clients, before, after = room_traffic(stack, tenant, publisher, stock_server, changes=changes)
    assert_every_update_in_order(clients, changes)
    # Nothing goes around python-engineio, so nothing is counted (the counter is not exported).
    assert before == after == {"direct": 0, "queued": 0}
    assert "direct websocket writes off (DIRECT_WEBSOCKET_WRITES=0)" in stock_server.log()
