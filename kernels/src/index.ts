export * from './api.js';
export * from './awq.js';
export { createDevice, cudaCompiledIn, cudaDeviceCount } from './device.js';
export * from './half.js';
