# syntax=docker/dockerfile:1
# The coordinator image: the medcluster CLI on Node, no GPU. From the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t medcluster-coordinator:0.1.0 .
# (BuildKit reads coordinator.Dockerfile.dockerignore beside this file.) Not built in CI.
ARG NODE_MAJOR=24

FROM node:${NODE_MAJOR}-bookworm-slim AS build
# The coordinator reads checkpoints through the worker package, which loads the kernels addon:
# a CPU-only build of it needs CMake and a C++17 compiler (Node-API headers come from npm).
RUN apt-get update \
  && apt-get install -y --no-install-recommends cmake g++ make python3 \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Manifests before sources, so the dependency layer is rebuilt only when they change.
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
ENV MEDCLUSTER_CUDA=0
RUN npm run build -w @medcluster/proto -w @medcluster/kernels -w @medcluster/worker -w @medcluster/coordinator \
  && npm prune --omit=dev --no-audit --no-fund

FROM node:${NODE_MAJOR}-bookworm-slim
ENV NODE_ENV=production
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
RUN ln -s /app/coordinator/bin/medcluster.js /usr/local/bin/medcluster
# The node user of the official image (uid 1000); the manifests run as 1000 too.
USER 1000:1000
ENTRYPOINT ["medcluster"]
CMD ["coordinator", "--help"]
