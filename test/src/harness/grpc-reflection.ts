// What a gRPC server lists through server reflection (grpc.reflection.v1): the services a
// client such as grpcurl discovers.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The services `address` lists; `key` goes as a bearer token where the server needs one. */
export async function reflectedServices(
  address: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  key?: string,
): Promise<string[]> {
  const require = createRequire(import.meta.url);
  const root = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');
  const definition = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { includeDirs: [root] });
  // biome-ignore lint/suspicious/noExplicitAny: the reflection package ships no generated types
  const pkg = grpc.loadPackageDefinition(definition) as any;
  const stub = new pkg.grpc.reflection.v1.ServerReflection(address, credentials);
  const metadata = new grpc.Metadata();
  if (key) metadata.set('authorization', `Bearer ${key}`);
  try {
    return await new Promise<string[]>((resolve, reject) => {
      const call = stub.ServerReflectionInfo(metadata);
      call.on('data', (m: { listServicesResponse?: { service: { name: string }[] } }) => {
        resolve((m.listServicesResponse?.service ?? []).map((s) => s.name));
        call.end();
      });
      call.on('error', reject);
      call.write({ listServices: '' });
    });
  } finally {
    stub.close();
  }
}
