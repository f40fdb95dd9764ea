"""A real grpcio client talking to Sluice: streams events and makes a unary call.

Usage: grpcio_client.py TARGET COUNT
Prints one JSON object: the sequence numbers received, the echo reply and the status of a
failing call, for the Rust test to check. The stubs come from SLUICE_PY_STUBS (generated from
proto/feed.proto by `cargo xtask setup`).
"""

import json
import os
import sys

sys.path.insert(0, os.environ["SLUICE_PY_STUBS"])

import grpc  # noqa: E402

import feed_pb2  # noqa: E402
import feed_pb2_grpc  # noqa: E402


def main() -> None:
    target, count = sys.argv[1], int(sys.argv[2])
    metadata = (("x-sluice-monitor", "py-monitor"), ("x-echo-origin", "python"))
    with grpc.insecure_channel(target) as channel:
        stub = feed_pb2_grpc.FeedStub(channel)
        seqs = []
        request = feed_pb2.SubscribeRequest(rate=0, payload_bytes=256, count=count, topic="py")
        for event in stub.Subscribe(request, metadata=metadata, timeout=30):
            seqs.append(event.seq)
        reply, call = stub.Echo.with_call(
            feed_pb2.EchoRequest(payload=b"\x00\x01py", text="from python"),
            metadata=metadata,
            timeout=10,
        )
        try:
            stub.Echo(
                feed_pb2.EchoRequest(),
                metadata=metadata + (("x-feed-fail-code", "9"), ("x-feed-fail-message", "precondition")),
                timeout=10,
            )
            failure = None
        except grpc.RpcError as error:
            failure = {"code": error.code().name, "details": error.details()}
        print(
            json.dumps(
                {
                    "seqs": seqs,
                    "echo_text": reply.text,
                    "echo_payload": list(reply.payload),
                    "echo_saw_monitor_header": "x-sluice-monitor" in reply.metadata,
                    "initial_metadata": dict(call.initial_metadata()),
                    "failure": failure,
                }
            )
        )


if __name__ == "__main__":
    main()
