// Channel options shared by every internal gRPC server and client. Prefill activations of the
// 70B model reach 64 MiB per step (2048 tokens x 8192 x fp32), past grpc-js's 4 MiB default.
export const INTERNAL_GRPC_OPTIONS = {
  'grpc.max_receive_message_length': 1 << 30,
  'grpc.max_send_message_length': 1 << 30,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  // A restarted worker comes back at the same address within seconds: retry connecting quickly
  // (grpc-js would back off up to 2 minutes).
  'grpc.initial_reconnect_backoff_ms': 250,
  'grpc.max_reconnect_backoff_ms': 2_000,
} as const;
