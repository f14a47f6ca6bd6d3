// Forms the collective of a tensor-parallel stage. The ranks first form the stage's gRPC group
// (GrpcCollective, as CPU workers always did); over it they tell each other what they run on,
// and when every rank runs CUDA they exchange what a device group needs and open one:
//   - CUDA IPC when every rank is on one host (same host name and boot id): each rank's
//     exchange-buffer handle travels to every rank;
//   - NCCL otherwise: rank 0's unique id travels to every rank.
// These bytes travel over the stage's own gRPC group rather than the control plane (NATS),
// because only the ranks of the stage need them, they are needed exactly when the group forms
// (so they cannot be stale), and the same path works with or without NATS (`medcluster up`).
// Otherwise the host transport stays in use. The choice is the same on every rank, since every
// rank decides from the same gathered facts.

import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Device, DeviceCollective, DeviceKind } from '@medcluster/kernels';
import type { Collective, CollectiveTransport } from '../engine/types.js';
import { CollectiveError } from './collective-error.js';
import { DeviceTransportCollective } from './device-transport.js';
import { gatherBytes, gatherJson } from './gather-bytes.js';
import { GrpcCollective, type GrpcCollectiveOptions, type HostGroup } from './grpc-collective.js';
import { HostCollective } from './host-collective.js';

/** What a stage asks for: `auto` picks ipc or nccl for CUDA ranks and grpc otherwise. */
export type TransportChoice = 'auto' | CollectiveTransport;

export const TRANSPORT_CHOICES: readonly TransportChoice[] = ['auto', 'grpc', 'ipc', 'nccl'];

export interface StageCollectiveOptions extends GrpcCollectiveOptions {
  /** This rank's device: the device group lives on it. */
  device: Device;
  /** Every rank must ask for the same (default auto). */
  transport?: TransportChoice;
  /** This machine's identity (default hostIdentity()): ranks with equal ids may use CUDA IPC. */
  hostId?: string;
  /** Device group buffers (kernels' DeviceCollectiveOptions). */
  bufferBytes?: number;
  /** How long a collective call waits for its peers: the IPC kernel's wait, and the gRPC group's
   * calls (unless callTimeoutMs says otherwise). */
  timeoutMs?: number;
  /** Told when auto falls back from ipc to nccl, and why. */
  log?: (line: string) => void;
}

/** Host name plus the kernel's boot id: equal on processes that can share CUDA IPC memory. */
export function hostIdentity(): string {
  let boot = '';
  try {
    boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    // not Linux: the host name alone
  }
  return boot ? `${hostname()}/${boot}` : hostname();
}

interface Hello {
  kind: DeviceKind;
  host: string;
  transport: TransportChoice;
}

/** Either a value or why this rank could not produce it, gathered from every rank. */
type Outcome<T> = { ok: T } | { error: string };

async function attempt<T>(fn: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: await fn() };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

function failures<T>(outcomes: Outcome<T>[]): string[] {
  return outcomes.flatMap((o, r) => ('error' in o ? [`rank ${r}: ${o.error}`] : []));
}

/** Forms the stage's group and opens the device group its ranks can use (see the header). */
export async function openStageCollective(options: StageCollectiveOptions): Promise<Collective> {
  const host = await GrpcCollective.create({
    ...options,
    callTimeoutMs: options.callTimeoutMs ?? options.timeoutMs,
  });
  try {
    return await chooseTransport(host, options);
  } catch (err) {
    await host.close();
    throw err;
  }
}

async function chooseTransport(host: GrpcCollective, options: StageCollectiveOptions): Promise<Collective> {
  const { group, device } = options;
  const choice = options.transport ?? 'auto';
  if (!TRANSPORT_CHOICES.includes(choice))
    throw new CollectiveError(
      `group ${group}: unknown transport '${choice}' (${TRANSPORT_CHOICES.join(', ')})`,
    );
  const hello: Hello = { kind: device.kind, host: options.hostId ?? hostIdentity(), transport: choice };
  const hellos = await gatherJson(host, hello);
  const asked = hellos.map((h) => h.transport);
  if (asked.some((t) => t !== choice)) {
    throw new CollectiveError(
      `group ${group}: ranks ask for different transports (${asked.map((t, r) => `rank ${r}: ${t}`).join(', ')})`,
    );
  }
  const notCuda = hellos.findIndex((h) => h.kind !== 'cuda');
  if (choice === 'grpc' || (choice === 'auto' && notCuda >= 0)) return new HostCollective(host);
  if (notCuda >= 0) {
    throw new CollectiveError(
      `group ${group}: transport ${choice} needs CUDA on every rank; rank ${notCuda} runs ${hellos[notCuda].kind}`,
    );
  }
  const apart = hellos.findIndex((h) => h.host !== hellos[0].host);
  if (choice === 'ipc' && apart >= 0) {
    throw new CollectiveError(
      `group ${group}: transport ipc needs every rank on one host; rank ${apart} is on ${hellos[apart].host}, rank 0 on ${hellos[0].host}`,
    );
  }
  if (choice === 'ipc' || (choice === 'auto' && apart < 0)) {
    const ipc = await openIpc(host, options);
    if ('ok' in ipc) return new DeviceTransportCollective(ipc.ok, host);
    if (choice === 'ipc') throw new CollectiveError(`group ${group}: CUDA IPC could not open: ${ipc.error}`);
    options.log?.(`group ${group}: CUDA IPC could not open (${ipc.error}); trying NCCL`);
  }
  return new DeviceTransportCollective(await openNccl(host, options), host);
}

/** Every rank prepares, exchanges handles, connects; all succeed or all get every rank's reason. */
async function openIpc(host: HostGroup, options: StageCollectiveOptions): Promise<Outcome<DeviceCollective>> {
  const { device, rank, size, bufferBytes, timeoutMs } = options;
  const prepared = await attempt(() => device.prepareIpcCollective({ rank, size, bufferBytes, timeoutMs }));
  const handles = await gatherBytes(host, 'ok' in prepared ? prepared.ok.handle : new Uint8Array(0));
  const preparedAll = await gatherJson(host, 'ok' in prepared ? { ok: true } : prepared);
  let problems = failures(preparedAll);
  if (problems.length > 0 || !('ok' in prepared)) return { error: problems.join('; ') };
  const connected = await attempt(() => prepared.ok.connect(handles));
  const connectedAll = await gatherJson(host, 'ok' in connected ? { ok: true } : connected);
  problems = failures(connectedAll);
  if (problems.length === 0 && 'ok' in connected) return connected;
  if ('ok' in connected) connected.ok.dispose();
  return { error: problems.join('; ') };
}

/** NCCL is loaded on every rank first, so a rank without it fails the group before any rank
 * blocks in ncclCommInitRank waiting for it. */
async function openNccl(host: HostGroup, options: StageCollectiveOptions): Promise<DeviceCollective> {
  const { device, rank, size, bufferBytes, timeoutMs, group } = options;
  const ready = await attempt(async () => {
    await device.ncclVersion();
    return rank === 0 ? Buffer.from(await device.ncclUniqueId()).toString('base64') : '';
  });
  const all = await gatherJson(host, ready);
  const problems = failures(all);
  if (problems.length > 0)
    throw new CollectiveError(`group ${group}: NCCL cannot start: ${problems.join('; ')}`);
  const uniqueId = new Uint8Array(Buffer.from((all[0] as { ok: string }).ok, 'base64'));
  try {
    return await device.openNcclCollective({ rank, size, bufferBytes, timeoutMs, uniqueId });
  } catch (err) {
    throw new CollectiveError(`group ${group}: ${(err as Error).message}`, { cause: err });
  }
}
