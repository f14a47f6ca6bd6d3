// The metric and label names the coordinator and the workers export (issue #13's list), which
// are all the dashboards and alert rules may use. A name missing here is a metric the code does
// not have: add it here only together with the code that exports it.

const COUNTERS = [
  'medcluster_requests_total',
  'medcluster_request_rejections_total',
  'medcluster_request_cancellations_total',
  'medcluster_preemptions_total',
  'medcluster_prompt_tokens_total',
  'medcluster_generation_tokens_total',
  'medcluster_step_tokens_total',
  'medcluster_step_failures_total',
  'medcluster_http_requests_total',
  'medcluster_worker_steps_total',
  'medcluster_worker_step_failures_total',
  'medcluster_worker_activation_bytes_total',
  'medcluster_worker_idle_seconds_total',
];

const HISTOGRAMS = [
  'medcluster_time_to_first_token_seconds',
  'medcluster_inter_token_latency_seconds',
  'medcluster_request_duration_seconds',
  'medcluster_request_queue_seconds',
  'medcluster_request_prefill_seconds',
  'medcluster_request_decode_seconds',
  'medcluster_step_duration_seconds',
  'medcluster_step_batch_size',
  'medcluster_worker_step_seconds',
  'medcluster_worker_activation_transfer_seconds',
  'medcluster_worker_collective_seconds',
];

const GAUGES = [
  'medcluster_requests_running',
  'medcluster_requests_waiting',
  'medcluster_kv_cache_blocks_used',
  'medcluster_kv_cache_blocks_total',
  'medcluster_cluster_healthy',
  'medcluster_worker_up',
  'medcluster_worker_heartbeat_age_seconds',
  'medcluster_worker_load_bytes',
  'medcluster_worker_load_bytes_total',
  'medcluster_worker_state',
  'medcluster_worker_kv_cache_blocks',
];

/** prom-client's process metrics (collectDefaultMetrics with the medcluster_ prefix). */
const PROCESS = [
  'medcluster_process_cpu_user_seconds_total',
  'medcluster_process_cpu_system_seconds_total',
  'medcluster_process_cpu_seconds_total',
  'medcluster_process_start_time_seconds',
  'medcluster_process_resident_memory_bytes',
  'medcluster_process_virtual_memory_bytes',
  'medcluster_process_heap_bytes',
  'medcluster_process_open_fds',
  'medcluster_process_max_fds',
];

export const METRIC_NAMES: ReadonlySet<string> = new Set([
  ...COUNTERS,
  ...GAUGES,
  ...PROCESS,
  ...HISTOGRAMS.flatMap((h) => [`${h}_bucket`, `${h}_sum`, `${h}_count`]),
]);

/** Labels of the series above, and the ones Prometheus adds to every scraped series. */
export const LABEL_NAMES: ReadonlySet<string> = new Set([
  'model',
  'outcome',
  'reason',
  'stage',
  'kind',
  'worker',
  'rank',
  'op',
  'direction',
  'state',
  'route',
  'status',
  'le',
  'job',
  'instance',
  // Added by the Prometheus Operator's PodMonitor.
  'namespace',
  'pod',
  'container',
  'endpoint',
]);
