export * from './api.js';
export * from './awq.js';
export * from './half.js';
