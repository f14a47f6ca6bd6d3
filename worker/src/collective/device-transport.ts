// The device transports of the Collective contract (engine/types.ts): calls go to a kernels
// DeviceCollective (CUDA IPC or NCCL), which queues them on the device's stream; the promises
// resolve at once. The stage's gRPC group stays open beside it (it formed the device group,
// and closing it tells the peers this rank left).
import type { DeviceCollective, Tensor } from '@medcluster/kernels';
import type { Collective } from '../engine/types.js';
import type { HostGroup } from './grpc-collective.js';

export class DeviceTransportCollective implements Collective {
  constructor(
    readonly device: DeviceCollective,
    private readonly host: HostGroup,
    private readonly setupBytes = host.payloadBytes,
  ) {}

  get transport(): 'ipc' | 'nccl' {
    return this.device.transport;
  }
  get rank(): number {
    return this.device.rank;
  }
  get size(): number {
    return this.device.size;
  }
  get grpcBytes(): number {
    return this.host.payloadBytes - this.setupBytes;
  }

  async allReduceSum(x: Tensor): Promise<void> {
    this.device.allReduceSum(x);
  }

  async allGatherCols(x: Tensor, widths: readonly number[]): Promise<Tensor> {
    return this.device.allGatherCols(x, widths);
  }

  async close(): Promise<void> {
    this.device.dispose();
    await this.host.close();
  }
}
