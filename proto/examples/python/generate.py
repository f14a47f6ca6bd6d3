#!/usr/bin/env python3
"""Streams a generation from a medcluster server over its public gRPC API.

Generate the client first (Debian: apt-get install python3-grpcio python3-grpc-tools):

    python3 -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT \
        proto/medcluster/v1/inference.proto
    PYTHONPATH=OUT python3 proto/examples/python/generate.py localhost:50051 "The patient presented with"

The text is printed as it streams; with --json, one JSON line of the token ids, the text and the
finish reason is printed at the end instead.
"""

import argparse
import json
import sys

import grpc
from google.protobuf import wrappers_pb2
from medcluster.v1 import inference_pb2, inference_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("prompt")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with grpc.insecure_channel(args.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = inference_pb2.GenerateRequest(
            text=args.prompt,
            max_tokens=args.max_tokens,
            temperature=wrappers_pb2.FloatValue(value=args.temperature),
        )
        ids, text, finish = [], [], None
        for message in stub.GenerateStream(request, timeout=120):
            ids.extend(message.token_ids)
            text.append(message.text)
            if not args.json:
                sys.stdout.write(message.text)
                sys.stdout.flush()
            if message.HasField("finish"):
                finish = inference_pb2.FinishReason.Name(message.finish.finish_reason)
        if args.json:
            print(json.dumps({"token_ids": ids, "text": "".join(text), "finish_reason": finish}))
        else:
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
