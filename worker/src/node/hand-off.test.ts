import { describe, expect, test } from 'vitest';
import { chooseHandOff, hostProcess } from './hand-off.js';

describe('hand-off choice', () => {
  const here = hostProcess();
  const host = here.slice(0, here.lastIndexOf('/'));
  const cuda = (hostProcess: string) => ({ hostProcess, deviceKind: 'cuda' });

  test('names this host and process', () => {
    expect(here.endsWith(`/${process.pid}`)).toBe(true);
    expect(host.length).toBeGreaterThan(0);
  });

  test('on the device only between CUDA processes of one host', () => {
    expect(chooseHandOff(cuda(`${host}/100`), cuda(`${host}/200`))).toBe('shared');
    // CUDA IPC cannot map a process's own memory.
    expect(chooseHandOff(cuda(`${host}/100`), cuda(`${host}/100`))).toBe('bytes');
    // Another host, or the same hostname after a reboot (another boot id).
    expect(chooseHandOff(cuda('a/boot1/100'), cuda('b/boot1/200'))).toBe('bytes');
    expect(chooseHandOff(cuda('a/boot1/100'), cuda('a/boot2/200'))).toBe('bytes');
    expect(chooseHandOff(cuda(`${host}/100`), { hostProcess: `${host}/200`, deviceKind: 'cpu' })).toBe(
      'bytes',
    );
    expect(chooseHandOff({ hostProcess: `${host}/100`, deviceKind: 'cpu' }, cuda(`${host}/200`))).toBe(
      'bytes',
    );
    // A receiver that reports no host (an older worker) gets bytes.
    expect(chooseHandOff(cuda(`${host}/100`), cuda(''))).toBe('bytes');
  });

  test('MEDCLUSTER_HAND_OFF=bytes keeps the bytes on the stream; a bad value is refused', () => {
    expect(chooseHandOff(cuda(`${host}/100`), cuda(`${host}/200`), 'bytes')).toBe('bytes');
    expect(chooseHandOff(cuda(`${host}/100`), cuda(`${host}/200`), 'auto')).toBe('shared');
    expect(() => chooseHandOff(cuda(`${host}/100`), cuda(`${host}/200`), 'nvlink')).toThrow(
      /MEDCLUSTER_HAND_OFF must be auto, shared or bytes, got nvlink/,
    );
  });
});
