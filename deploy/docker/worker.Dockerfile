# syntax=docker/dockerfile:1
# The worker image: the medcluster CLI with the kernels addon built for CUDA (sm_80 and sm_90a
# machine code plus compute_90 PTX, kernels/CMakeLists.txt), and the pod entrypoint that starts
# one worker per GPU. From the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t medcluster-worker:0.1.0 .
# (BuildKit reads worker.Dockerfile.dockerignore beside this file.) Not built in CI.
# The addon links the CUDA runtime statically, so nodes need a driver for CUDA 13 (>= 580).
ARG NODE_MAJOR=24
ARG CUDA_VERSION=13.0.0
ARG CUDA_OS=ubuntu24.04

# Node comes from the official image: its binary needs only glibc and libstdc++, which the
# CUDA images' Ubuntu provides.
FROM node:${NODE_MAJOR}-bookworm-slim AS node

FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_OS} AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm/ /usr/local/lib/node_modules/npm/
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
  && apt-get update \
  && apt-get install -y --no-install-recommends cmake g++ make python3 \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
COPY proto/package.json proto/
COPY kernels/package.json kernels/
COPY worker/package.json worker/
COPY coordinator/package.json coordinator/
COPY test/package.json test/
RUN npm ci --no-audit --no-fund
COPY tsconfig.base.json ./
COPY proto/ proto/
COPY kernels/ kernels/
COPY worker/ worker/
COPY coordinator/ coordinator/
# nvcc is on PATH in the devel image, so the build includes the CUDA backend; fail the image
# build if it did not (a CPU-only worker image would only fail at --device cuda).
RUN npm run build -w @medcluster/proto -w @medcluster/kernels -w @medcluster/worker -w @medcluster/coordinator \
  && node -e "if (!require('./kernels/build/Release/medcluster_kernels.node').cudaCompiledIn()) { console.error('the addon has no CUDA backend'); process.exit(1); }" \
  && npm prune --omit=dev --no-audit --no-fund

# The runtime image carries cuBLAS (loaded at run time for matmuls of 256 rows and more) and NCCL
# (libnccl.so.2, loaded at run time); the addon needs neither to load.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_OS}
ENV NODE_ENV=production
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules/ node_modules/
COPY --from=build /src/proto/package.json proto/
COPY --from=build /src/proto/dist/ proto/dist/
COPY --from=build /src/proto/medcluster/ proto/medcluster/
COPY --from=build /src/proto/grpc/ proto/grpc/
COPY --from=build /src/kernels/package.json kernels/
COPY --from=build /src/kernels/dist/ kernels/dist/
COPY --from=build /src/kernels/build/Release/medcluster_kernels.node kernels/build/Release/
COPY --from=build /src/worker/package.json worker/
COPY --from=build /src/worker/dist/ worker/dist/
COPY --from=build /src/coordinator/package.json coordinator/
COPY --from=build /src/coordinator/dist/ coordinator/dist/
COPY --from=build /src/coordinator/bin/ coordinator/bin/
COPY deploy/docker/worker-pod.sh /usr/local/bin/medcluster-worker-pod
RUN ln -s /app/coordinator/bin/medcluster.js /usr/local/bin/medcluster \
  && chmod 0755 /usr/local/bin/medcluster-worker-pod
# uid 1000 (the image's ubuntu user); the manifests run as 1000 too.
USER 1000:1000
ENTRYPOINT ["medcluster-worker-pod"]
